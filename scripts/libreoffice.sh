#!/usr/bin/env bash
# LibreOffice (headless, no GUI: Writer, Calc, Impress) converts Office, web, Markdown, EPUB and text files to PDF
# for ingest. Installed with apt when this runs as root and it is missing; otherwise a note says what to install.
# PDFs and images never need it.
if ! command -v soffice >/dev/null 2>&1; then
    packages="libreoffice-core-nogui libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui \
fonts-crosextra-carlito fonts-crosextra-caladea"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "colsmol: installing LibreOffice (headless) for Office, web, Markdown and EPUB files"
        # shellcheck disable=SC2086
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages) \
            >/dev/null || echo "colsmol: could not install LibreOffice; Office files will fail (PDFs and images work)"
    else
        echo "colsmol: LibreOffice not found; Office, web, Markdown and EPUB files will fail until you run:"
        echo "    apt-get install $packages"
    fi
fi
