"""Stand-in for aia.start (sync, pids=[0]) until the engine lands."""
import aia
class H: pass
def start(alg, problem, stopat, *, pids=None, synchronous=True, verbose=0, cluster=None, **kw):
    p = problem(0) if callable(problem) else problem
    q = alg.initialize(p)
    it = 0
    while True:
        a = alg.answer(q, p)
        q = alg.sync_central_step([a], [0], p)
        it += 1
        if alg.stopnow(stopat) or it >= stopat.get("iteration", 10**9):
            break
    h = H(); h.__dict__.update(alg.report()); return h
if not hasattr(aia, "start"):
    aia.start = start
