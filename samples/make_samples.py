"""Regenerate the sample PDFs used by the README's first command (needs fpdf2: pip install fpdf2).

    python samples/make_samples.py
"""

from __future__ import annotations

from pathlib import Path

from fpdf import FPDF

HERE = Path(__file__).parent


def annual_report() -> FPDF:
    pdf = FPDF(format="letter")
    pdf.set_auto_page_break(True, 20)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 24)
    pdf.cell(0, 20, "Northwind Cycles - Annual Report 2023", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 12)
    pdf.multi_cell(
        0, 7,
        "Northwind Cycles designs and sells city bicycles and electric cargo bikes in twelve countries. "
        "2023 was our strongest year: revenue grew 18 percent to 48.2 million euros, driven by cargo bikes, "
        "which now make up 41 percent of sales. We opened two stores, in Lyon and in Rotterdam.",
    )
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 12, "Revenue by product line (million EUR)", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 12)
    rows = [("Product line", "2022", "2023"), ("City bikes", "22.1", "23.4"), ("Cargo bikes", "14.6", "19.8"),
            ("Parts and service", "4.1", "5.0"), ("Total", "40.8", "48.2")]
    with pdf.table() as table:
        for row in rows:
            r = table.row()
            for cell in row:
                r.cell(cell)
    pdf.ln(6)
    pdf.multi_cell(0, 7, "Operating margin was 9.4 percent, up from 7.9 percent in 2022.")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 12, "Outlook for 2024", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 12)
    pdf.multi_cell(
        0, 7, "We expect revenue between 52 and 55 million euros and will launch a folding e-bike in spring."
    )
    return pdf


def safety_manual() -> FPDF:
    pdf = FPDF(format="A4")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 20)
    pdf.cell(0, 16, "Cargo e-bike: battery safety", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 12)
    for line in [
        "1. Charge the battery between 10 and 30 degrees Celsius.",
        "2. A full charge takes about 4.5 hours with the 4 A charger.",
        "3. Store the battery at 50 to 70 percent charge if unused for more than a month.",
        "4. Never open the battery case. Warranty: 2 years or 800 charge cycles.",
    ]:
        pdf.multi_cell(0, 8, line, new_x="LMARGIN", new_y="NEXT")
    pdf.set_fill_color(230, 60, 40)
    pdf.rect(20, 120, 60, 30, style="F")
    pdf.set_xy(20, 155)
    pdf.cell(0, 8, "Red warning light: stop riding and contact service.")
    return pdf


if __name__ == "__main__":
    annual_report().output(str(HERE / "northwind-annual-report-2023.pdf"))
    safety_manual().output(str(HERE / "cargo-bike-battery-safety.pdf"))
