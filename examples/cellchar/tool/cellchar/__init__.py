"""cellchar: a toy cell characterizer standing in for tools such as libretto or charao.

It reads SPICE-like netlists, "characterizes" each cell (counts its transistors and
derives made-up but deterministic timing numbers) and writes a Liberty-like library
and a Markdown report.
"""

__version__ = "0.1.0"
