"""Audit: the orchestration of one verification run (measure -> judge -> seal), sweeps, the SLO
search and the demo.

May import every library package (measure, judge, seal, intent, present, twin); never the CLI.
Progress goes through an observer the caller supplies; nothing here prints.
"""
