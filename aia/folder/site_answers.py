"""How a folder site answers the queries of a run (`aia.folder.site`'s server is an
`Answering`): the latest valid query, each once, its answer written with the digest of the
query it answers; an error as data (`error_body`), as a local worker reports it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

from ..worker_state import remote_error
from . import codec
from .layout import QUERY

log = logging.getLogger("aia.folder")


class Answering:
    """The answering of `aia.folder.site`'s server (its ``layout``, ``reader``, ``site``,
    ``field`` and ``where``), on a run's state (``worker``, ``answered``...)."""

    def answer_latest(self, run: str, st: Any) -> None:
        """Answer the run's latest valid query, unless it is answered already."""
        lay = self.layout
        for seq in lay.numbered(run, self.site, QUERY):
            path = lay.query(run, self.site, seq)
            sig = self.reader.signature(path)
            if st.answered is not None and st.answered[0] == seq and st.answered_sig == sig:
                return
            where = self.where(run=run, site=self.site, iteration=seq)
            try:
                got = self.reader.read(path, {"kind": "query", **where}, undecodable=True)
            except codec.Undecodable as exc:
                got, failure = (exc.envelope, None), exc
            else:
                failure = None
            if got is None:
                continue  # rejected (or gone): the one before may be the valid latest
            digest = got[0].get(self.field)
            st.answered_sig = sig
            if st.answered == (seq, digest):
                return
            old = self.reader.read(lay.answer(run, self.site, seq),
                                   {"kind": "answer", **where})
            if old is None or old[0].get("query") != digest:
                self.reply(lay.answer(run, self.site, seq), where, digest, st, got[1], failure)
            st.answered = (seq, digest)
            return

    def reply(self, path: Path, where: dict, digest: str, st: Any, query: Any,
              failure: Optional[Exception]) -> None:
        if failure is not None:
            body = {"error": error_body(ValueError(f"site {self.site} cannot read the query: "
                                               f"{failure}"), with_traceback=False)}
        else:
            try:
                body = {"answer": st.worker.answer(where["run"], query)}
            except Exception as exc:
                log.warning("site %s: the answer to query %s raised %s: %s", self.site,
                            where["iteration"], type(exc).__name__, exc)
                body = {"error": error_body(exc)}
        # No fsync (durable=False): an answer lost to a power cut, or torn (its digest
        # fails), is answered again by this site once it runs again; see the central's
        # queries.
        try:
            self.layout.write(path, "answer", where, body, self.key, extra={"query": digest},
                              durable=False)
        except TypeError as exc:  # an answer the folder cannot carry
            self.layout.write(path, "answer", where, {"error": error_body(exc)}, self.key,
                              extra={"query": digest}, durable=False)
        st.count += 1
        now = time.monotonic()
        if now - st.logged >= 1.0:  # at most a line a second
            st.logged = now
            log.info("site %s: answered query %d of run %s (%d in this process)", self.site,
                     where["iteration"], where["run"], st.count)
        else:
            log.debug("site %s: answered query %d of run %s", self.site, where["iteration"],
                      where["run"])


def error_body(exc: BaseException, with_traceback: bool = True) -> dict:
    name, message, tb = remote_error(exc)  # as a local worker reports it
    return {"type": name, "message": message, "traceback": tb if with_traceback else ""}
