"""The text above the tables of docs/protocols.md."""

HEADER = """
# Protocols: every setting, with its source

This page is generated from `clenv/settings/` by `python -m clenv.settings >
docs/protocols.md`; edit the tables there, not here (a test checks the two agree).

Each row is one setting of one benchmark: its value in the official code of LoP
(Dohare et al., Nature 2024, `github.com/shibhansh/loss-of-plasticity`) and of SC
(Prakash, He, Guo et al., ICML 2026, `github.com/KevinGuo27/lop-jax`), the file and line
of that code it was read from, the clenv option that sets it, and the test that pins it.
`--protocol lop` / `--protocol sc` fill every option left unset with that paper's
value; an explicit option always wins. A dash means the paper's code has no such
setting, and the option's own default applies.
"""
