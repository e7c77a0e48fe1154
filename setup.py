"""Build hook for the one optional compiled piece: the CPU MaxSim kernel (``retriever/_cpu_maxsim.cpp``).

Everything else is declared in pyproject.toml. The extension is ``optional``: without a C++ compiler (or on a
platform where it fails to build) the install still succeeds and ``retriever.cpu_maxsim`` falls back to torch.
No ``-march`` flags: the kernel's functions carry their own ``target("avx2,fma,f16c")`` and the module checks the
CPU at run time, so one build runs everywhere.
"""

import sys

from setuptools import Extension, setup

args = [] if sys.platform == "win32" else ["-O3", "-std=c++17", "-pthread", "-fvisibility=hidden"]
link = [] if sys.platform == "win32" else ["-pthread"]

setup(
    ext_modules=[
        Extension(
            "retriever._cpu_maxsim",
            sources=["retriever/_cpu_maxsim.cpp"],
            extra_compile_args=args,
            extra_link_args=link,
            language="c++",
            optional=True,
        )
    ]
)
