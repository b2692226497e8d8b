"""Discrete-event simulator of one serving engine driven by the policy core (`chameleon simulate`).

Modules: profile (cost + memory constants, JSON), paper_a40 (the shipped A40/Llama-7B profile),
profiles (by name), cost (step and load times), engine (the event loop), metrics, runner (policies,
parallel sweeps), report (tables, summary, JSON), plot (matplotlib, imported only for --plot); the CLI
is chameleon/tools/simulate.py.
"""
