"""Secure aggregation: the central learns the sums over the sites, never one site's.

`SecureAggregation` wraps a GLM algorithm (`FisherScoring`, `GradientDescent`) and changes
only what crosses the wire: every sum a site sends (X'WX, X'Wz, the deviance, the Pearson
and working chi-squares, the counts, the null-deviance terms, the score) arrives masked,
and the central decodes only their total, which it hands to the algorithm as if a single
site had sent it. It lives in the algorithm's messages, not in an engine: the same run
works over local processes, Ray or a synced folder. Pairwise masks as Bonawitz et al.
(CCS 2017), with a double mask for sites that fail mid-round::

    round "keys"    central ── session id ─────────────────────────────▶ site
                    central ◀── X25519 public key ──────────────────── site
    round "sums"    central ── query, roster (names, public keys) ───▶ site
                    central ◀── y_i + sum_j ±PRG(s_ij) + PRG(b_i,r) ── site   (mod 2^192)
    round "unmask"  central ── round r ─────────────────────────────▶ site
                    central ◀── the key of PRG(b_i, r) ─────────────── site

*Keys.* Each site makes an X25519 key pair per run (session); the central relays the public
keys; each pair of sites derives its seed ``s_ij`` by HKDF-SHA256 from their Diffie-Hellman
secret, which the central cannot compute. Site i adds ``+PRG(s_ij)`` for every j after it in
the roster and ``-PRG(s_ij)`` for every j before: over the roster the pairwise masks cancel.
The PRG is SHAKE-256 of the seed, the session and the round: a fresh mask every round.

*Exact arithmetic.* Every number is encoded in fixed point with 96 fraction bits in the ring
of integers mod 2^192: a double of magnitude at least 2^-44 is encoded exactly, so the
decoded total is the exact sum rounded once (as accurate as the plain sum, or more). A value
that is not finite, or too large for the sum of all sites to stay in the ring (2^95 / the
number of sites), is an error at the site, never a wrong sum.

*Failures* (``resilience``). Each site also adds a self mask ``PRG(b_i, r)`` that it reveals
(phase "unmask") only once the central has every masked vector of the round. When a site
fails before sending its vector, the central asks the same query again among the others,
with masks among them only; the first round's vectors stay undecodable, since no site
revealed its self mask for them. (`GradientDescent` starts again among the others instead:
see its ``sites_left``.) Inherent to going on without a site: the others' sums at the next
coefficients, set against the last ones that counted it, approximate its sums to within
the change a step makes. A site failing after its vector arrived (in the unmask
phase) ends the fit: the others have revealed their self masks for these coefficients and
will not do so again for another set of sites (below).

*Differencing.* A site reveals its self mask for given coefficients for one set of sites
only: the sums of two sets at the same coefficients would give, by difference, the sums of
the sites in one and not the other (the sums of a site that "failed", or was left out).
Each site keeps the set it unmasked for each coefficients it answered (across runs, for as
long as its process lives; see `secure_guards.ledger_of`) and refuses another. It also
refuses a roster of fewer than 3 sites: with 2, the total minus its own sums is the other
site's.

Threat model: an honest-but-curious central (it follows the protocol and tries to learn from
what it sees) and sites that do not collude with it. Not protected: the pooled sums and the
estimates themselves (what the central is there to compute); a site colluding with the
central when there are 3 sites (it knows its own sums: the total minus them is the sum of the
two others); a central that impersonates sites (there is no public-key infrastructure: the
central relays the keys). The saturated log-likelihood (binomial, Poisson) comes masked
with Fisher scoring's first round, from which the log-likelihood at the estimate follows;
otherwise it is summed securely at the estimate (`SiteSum`). Sent in clear as without
secure aggregation: the category levels and the moments of ``center()``/``scale()``
columns at first contact. Masked too: glm.nb's theta sums and the sandwich's meat (HC0,
HC1, clusters by site; `SiteSum` of a dict), glmnet's binomial and Poisson rounds and
cv_glmnet's per-fold sums (`secure_codec`: fields of variable length). Refused:
``cov_type="cluster"`` with ``groups`` (digests of cluster ids per site) and
``cv_glmnet(folds="sites")`` (the total minus one site's sums).

*Synchronous only, by design.* Asynchronous mode is refused (`check_secure`), not left
unwritten: the masks cancel only in the sum of every site's answer to the same query, and
an asynchronous central steps on each answer as it comes, none of which it can decode.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace
from typing import Any, Mapping, Optional, Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aia.algorithm import AbstractAlgorithm

from .base import DesignMismatchError
from .design import SiteError
from .messages import Contribution
from .secure_codec import (ENTRY_BYTES, FRACTION_BITS, KEY_BYTES, LAYOUTS, MIN_SITES,  # noqa: F401
                           MODULUS, MULTIPART, RING_BITS, Total, Totals, _flags, _lengths, _pack,
                           _parts_of, _unpack, decode, encode, entries, from_bytes, stream,
                           to_bytes)

from .secure_guards import check_secure, ledger_of, query_key  # noqa: F401 (check_secure)
from .secure_messages import KeyAnswer, MaskedAnswer, SecureQuery, Unmask
from .secure_sum import SiteSum, SumQuery  # noqa: F401 (algorithms.glm.secure's names)

log = logging.getLogger(__name__)


class SecureAggregationError(RuntimeError):
    """The secure aggregation cannot go on (a site failed after sending its masked sums, too
    few sites are left, or an answer is malformed)."""


def _label(session: bytes, round_: int, what: bytes) -> bytes:
    return what + session + round_.to_bytes(8, "little")


def _hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(secret)


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# -- the algorithm -----------------------------------------------------------------------------
class SecureAggregation(AbstractAlgorithm):
    """``inner`` (a `FisherScoring`, `GradientDescent`, `SiteSum` or glmnet's `GlmnetRun`),
    its sums aggregated securely (see the module docstring); synchronous mode, one site per
    worker. The fit is on ``inner``; ``redone_rounds`` counts the rounds redone after a
    site failed."""

    def __init__(self, inner: Any):
        self.inner = inner
        self._fresh = True  # stopnow: the inner algorithm has stepped since the last check
        self._reset()

    def _reset(self) -> None:
        self._session = b""
        self._phase = "keys"
        self._round = 0
        self._roster: list = []  # (worker, name, public key)
        self._inner_query = None
        self._width: Optional[int] = None
        self._masked: list = []
        self._changed = False
        self.redone_rounds = 0
        self.secure_rounds = 0
        # worker side
        self._private: Optional[X25519PrivateKey] = None
        self._self_secret = b""
        self._rounds: dict = {}  # round -> (names, query key)

    # -- worker ---------------------------------------------------------------------------
    def answer(self, q: SecureQuery, problem: Any):
        if isinstance(problem, (list, tuple)) or not hasattr(problem, "model"):
            raise SiteError("secure aggregation needs one site per worker")
        if q.phase == "keys":
            self._private = X25519PrivateKey.generate()
            self._self_secret = secrets.token_bytes(KEY_BYTES)
            self._session = q.session
            return KeyAnswer(problem.name, _raw(self._private.public_key()))
        if self._private is None or q.session != self._session:
            raise SiteError(f"site {problem.name}: a query of another session")
        if q.phase == "sums":
            return self._masked_answer(q, problem)
        if q.phase == "unmask":
            return self._unmask(q, problem)
        raise SiteError(f"site {problem.name}: unknown phase {q.phase!r}")

    def _own_index(self, roster: Sequence, site: Any) -> int:
        if len(roster) < MIN_SITES:
            raise SiteError(f"site {site.name}: refused: a secure sum over {len(roster)} sites "
                            f"(at least {MIN_SITES}: with 2, the total reveals the other's)")
        mine = _raw(self._private.public_key())
        found = [i for i, (_, key) in enumerate(roster) if key == mine]
        if len(found) != 1 or roster[found[0]][0] != site.name:
            raise SiteError(f"site {site.name}: the roster does not list this site once")
        if len({key for _, key in roster}) != len(roster) or \
                len({name for name, _ in roster}) != len(roster):
            raise SiteError(f"site {site.name}: the roster lists a site or a key twice")
        return found[0]

    def _masked_answer(self, q: SecureQuery, site: Any) -> MaskedAnswer:
        me = self._own_index(q.roster, site)
        plain = self.inner.answer(q.inner, site)
        kind = type(plain).__name__
        parts = _parts_of(plain)
        if kind not in LAYOUTS and kind not in MULTIPART or \
                any(type(part).__name__ not in LAYOUTS for _, part in parts):
            raise SiteError(f"site {site.name}: cannot mask a {kind}")
        valid = all(getattr(part, "valid", True) for _, part in parts)
        base = dict(kind=kind, site=site.name, round=q.round, version=plain.version,
                    valid=valid, withheld=getattr(plain, "withheld", False),
                    columns=getattr(plain, "columns", None),
                    parts=tuple((fit, type(part).__name__) for fit, part in parts),
                    lengths=_lengths(plain))
        if not valid:
            return MaskedAnswer(**base)
        values, absent, width = _pack(plain)
        ring = encode(values, len(q.roster), site.name)
        label = _label(q.session, q.round, b"pair")
        for j, (_, key) in enumerate(q.roster):
            if j == me:
                continue
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(key))
            pair = b"".join(sorted((key, _raw(self._private.public_key()))))
            mask = stream(_hkdf(shared, q.session, b"aia-glm pair seed" + pair), label,
                          len(ring))
            sign = 1 if j > me else -1
            ring = [(v + sign * m) % MODULUS for v, m in zip(ring, mask)]
        own = stream(self._self_key(q.round), b"self", len(ring))
        ring = [(v + m) % MODULUS for v, m in zip(ring, own)]
        names = frozenset(name for name, _ in q.roster)
        self._rounds[q.round] = (names, query_key(self.inner.design,
                                                    getattr(self.inner, "_subset", None),
                                                    q.inner))
        return MaskedAnswer(**base, width=width, absent=absent, payload=to_bytes(ring))

    def _self_key(self, round_: int) -> bytes:
        return _hkdf(self._self_secret, self._session, _label(b"", round_, b"self mask"))

    def _unmask(self, q: SecureQuery, site: Any) -> Unmask:
        if q.round not in self._rounds:
            raise SiteError(f"site {site.name}: no masked sums of round {q.round} to unmask")
        names, key = self._rounds.pop(q.round)
        if len(names) < MIN_SITES:
            raise SiteError(f"site {site.name}: refused to unmask a sum over {len(names)} sites")
        # The differencing guard (see the module docstring): the self mask is revealed for
        # one set of sites per coefficients, ever.
        ledger = ledger_of(site)
        before = ledger.get(key)
        if before is not None and before != names:
            raise SiteError(
                f"site {site.name}: refused to unmask: these coefficients were already "
                f"answered for the sites {sorted(before)}, now for {sorted(names)}; the "
                "difference of the two sums would reveal the sums of the sites in one set "
                "and not the other")
        ledger[key] = names
        return Unmask(site.name, q.round, self._self_key(q.round))

    # -- central --------------------------------------------------------------------------
    def initialize(self, problem: Any) -> SecureQuery:
        self._reset()
        self._inner_query = self.inner.initialize(problem)
        self._session = secrets.token_bytes(16)
        self._fresh = True
        return SecureQuery("keys", self._session)

    def sync_central_step(self, answers: Sequence[Any], workers: Sequence[int], problem: Any):
        self._fresh = False
        self.secure_rounds += 1
        if self._phase == "keys":
            return self._after_keys(answers, workers)
        if self._phase == "sums":
            return self._after_sums(answers, workers, problem)
        return self._after_unmask(answers, workers, problem)

    def central_step(self, a: Any, worker: int, problem: Any):
        raise SecureAggregationError(
            "secure aggregation runs synchronously only (by design: the masks cancel only "
            "in the sum of every site's answer to the same query)")

    def _after_keys(self, answers, workers) -> SecureQuery:
        roster = []
        for w, a in zip(workers, answers):
            if not (isinstance(a, KeyAnswer) and isinstance(a.public_key, bytes)
                    and len(a.public_key) == KEY_BYTES):
                raise SecureAggregationError(f"site {getattr(a, 'site', w)}: malformed public "
                                             "key (expected 32 bytes of X25519)")
            roster.append((w, a.site, a.public_key))
        self._roster = roster
        self._enough()
        return self._sums_query()

    def _enough(self) -> None:
        if len(self._roster) < MIN_SITES:
            raise SecureAggregationError(
                f"only {len(self._roster)} site(s) left ({[n for _, n, _ in self._roster]}): "
                f"secure sums need at least {MIN_SITES}")

    def _sums_query(self) -> SecureQuery:
        self._round += 1
        self._phase = "sums"
        return SecureQuery("sums", self._session, self._round,
                           tuple((name, key) for _, name, key in self._roster),
                           self._inner_query)

    def _survivors(self, workers) -> bool:
        """Drop the sites that failed; True if any did."""
        kept = [r for r in self._roster if r[0] in set(workers)]
        if len(kept) == len(self._roster):
            return False
        lost = [r[1] for r in self._roster if r[0] not in set(workers)]
        self._roster = kept
        self._enough()
        log.warning("secure aggregation: site(s) %s failed in round %d; the round is redone "
                    "among the %d others", lost, self._round, len(kept))
        return True

    def _name(self, worker) -> str:
        return next((n for w, n, _ in self._roster if w == worker), str(worker))

    def _after_sums(self, answers, workers, problem) -> SecureQuery:
        if self._survivors(workers):
            # Fisher scoring and a single sum ask the same query again (each round's sums
            # are at new coefficients); gradient descent, whose metric and accepted point
            # are sums over the old sites, starts again among the others.
            restart = getattr(self.inner, "sites_left", None)
            if restart is None and type(self.inner).__name__ not in ("FisherScoring",
                                                                     "SiteSum"):
                raise SecureAggregationError(
                    f"a site failed: {type(self.inner).__name__} cannot redo a round among "
                    "the others")
            if restart is not None:
                self._inner_query = restart(self._inner_query)
            self.redone_rounds += 1
            self._changed = True
            return self._sums_query()  # masks among the others only
        for w, a in zip(workers, answers):
            self._check_answer(w, a)
        if not all(a.valid for a in answers):
            return self._inner_step([_flags(a) for a in answers], workers, problem)
        self._check_columns(answers)
        width = self._width if self._width is not None else answers[0].width
        if answers[0].width == 0:  # a glmnet round of deviances only: no vector, no matrix
            width = 0
        for w, a in zip(workers, answers):
            need = entries(answers[0].parts, width, answers[0].lengths) * ENTRY_BYTES
            if a.width != width or a.parts != answers[0].parts or len(a.payload) != need \
                    or a.lengths != answers[0].lengths:
                raise SecureAggregationError(
                    f"site {a.site}: malformed masked vector: expected {need} bytes for "
                    f"{width} columns and variable lengths {list(answers[0].lengths)}, got "
                    f"{len(a.payload)} bytes for {a.width} and {list(a.lengths)}")
            # Decoding a field some site left out would give the sum of the others only.
            if set(a.absent) != set(answers[0].absent):
                raise SecureAggregationError(
                    f"site {a.site}: its absent sums {sorted(a.absent)} differ from site "
                    f"{answers[0].site}'s {sorted(answers[0].absent)}: the round is not "
                    "unmasked")
        self._width = answers[0].width or self._width
        self._masked = list(answers)
        self._phase = "unmask"
        return SecureQuery("unmask", self._session, self._round)

    def _check_answer(self, worker, a) -> None:
        name = self._name(worker)
        parts = getattr(a, "parts", None)
        ok = (isinstance(a, MaskedAnswer) and a.site == name and a.round == self._round
              and isinstance(a.payload, bytes) and isinstance(a.width, int) and a.width >= 0
              and isinstance(parts, tuple) and parts
              and all(isinstance(p, tuple) and len(p) == 2 and p[1] in LAYOUTS
                      for p in parts))
        if ok:
            fields = {(i, f) for i, (_, kind) in enumerate(parts) for f, _, _ in LAYOUTS[kind]}
            ok = all(isinstance(x, tuple) and tuple(x) in fields for x in a.absent)
            variable = {(i, f) for i, (_, kind) in enumerate(parts)
                        for f, dims, _ in LAYOUTS[kind] if dims == "v"}
            ok = ok and isinstance(a.lengths, tuple) and \
                {tuple(x[:2]) for x in a.lengths if isinstance(x, tuple) and len(x) == 3
                 and isinstance(x[2], int) and x[2] >= 0} == variable == \
                {tuple(x[:2]) for x in a.lengths}
        if not ok:
            raise SecureAggregationError(
                f"site {name}: malformed masked answer in round {self._round} (expected a "
                f"MaskedAnswer of this round, got {type(a).__name__})")

    def _check_columns(self, answers) -> None:
        columns = [a.columns for a in answers]
        if any(c != columns[0] for c in columns):
            detail = "; ".join(f"{a.site}: {list(a.columns or ())}" for a in answers)
            raise DesignMismatchError(f"the sites built different design columns ({detail})")

    def _after_unmask(self, answers, workers, problem) -> SecureQuery:
        if self._survivors(workers):
            raise SecureAggregationError(
                "a site failed after sending its masked sums: the round cannot be redone "
                "among the others (they revealed their masks for these coefficients, and "
                "will not do so for another set of sites)")
        total = [0] * (len(self._masked[0].payload) // ENTRY_BYTES)
        for w, a, m in zip(workers, answers, self._masked):
            if not (isinstance(a, Unmask) and a.round == self._round
                    and isinstance(a.key, bytes) and len(a.key) == KEY_BYTES):
                raise SecureAggregationError(f"site {self._name(w)}: malformed unmask answer "
                                             f"in round {self._round}")
            own = stream(a.key, b"self", len(total))
            total = [(t + v - s) % MODULUS for t, v, s in zip(total, from_bytes(m.payload), own)]
        first = self._masked[0]
        combined = _unpack(first, decode(total), {tuple(x) for x in first.absent})
        return self._inner_step([combined], [workers[0]], problem)

    def _inner_step(self, contribs, workers, problem) -> SecureQuery:
        """The GLM algorithm's step on the decoded total; then its next query."""
        q = self.inner.sync_central_step(contribs, workers, problem)
        if self._changed and contribs[0].valid and isinstance(contribs[0], Contribution):
            q = self._after_change(contribs[0], q)
        self._inner_query = q
        self._fresh = True
        return self._sums_query()

    def _after_change(self, total: Contribution, q):
        """The sites changed: counts, and the null deviance at the mean of the sites left
        (asked with the next query)."""
        inner = self.inner
        inner.nobs, inner.n_ok, inner.sum_w = total.nobs, total.n_ok, total.sum_w
        if hasattr(inner, "saturated_loglike"):
            # The others' own only if this was R's starting round redone (not asked again:
            # its difference with the first total would be the lost site's); else glm.fit
            # sums the log-likelihood at the estimate instead.
            inner.saturated_loglike = total.saturated_loglike
        self._changed = False
        if inner._null_mode in ("mean", "offset"):
            inner._null_parts.clear()
            inner.null_deviance = None
            if inner._null_mode == "mean":
                inner._null_value = total.sum_wy / total.sum_w
            q = replace(q, null=inner._null_value) if hasattr(q, "null") else q
        return q

    # -- hooks ----------------------------------------------------------------------------
    def stopnow(self, stopat: Mapping[str, Any]) -> bool:
        # The inner rule only once the inner algorithm has stepped: not mid-round.
        return self.inner.stopnow(stopat) if self._fresh else False

    def progress(self, stopat: Mapping[str, Any]) -> float:
        return self.inner.progress(stopat)

    def showvalues(self) -> list:
        return self.inner.showvalues()

    def report(self) -> dict:
        return {**self.inner.report(), "secure_rounds": self.secure_rounds,
                "redone_rounds": self.redone_rounds}
