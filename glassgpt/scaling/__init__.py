"""Predictable scaling: ladder → fit → registered prediction → target → verify.

ladder.py (plan, run, collect), fit.py (L(C), L(N, D), bootstrap, backtest, 90% interval,
leave-largest-out, regime check), capability.py (next-line pass rates), predict.py (register,
verify, report), plot.py (scaling.png), speedrun.py (the whole pipeline behind `glassgpt speedrun`).
"""
