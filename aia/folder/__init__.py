"""Sites that share only a synced folder (Dropbox, Box, a network drive).

Each site runs its own process on its own data; the central drives the algorithm through
files. `FolderCluster` is an `aia` cluster whose workers are such sites, so `aia.start`
runs unchanged::

    central (aia.start on a FolderCluster)        site (python -m aia.folder site ...)
    --------------------------------------        ------------------------------------
    session.json: the sites           ------->    finds the session that names it,
                                      <-------    sites/<site>.json: joined
    runs/<run>/run.json: algorithm    ------->    builds it if registered and allowed,
      by name + parameters                        loads its problem from its data file
                                      <-------    runs/<run>/<site>/status.json: ready|failed
    runs/<run>/<site>/q-000001.npz    ------->    answer(q, problem)
    (waits on file events)            <-------    runs/<run>/<site>/a-000001.npz
    ...                                           ...
    runs/<run>/end.json, end.json     ------->    exits

Safety, since others can write to the folder:

- Nothing read from the folder is unpickled or executed: JSON and ``.npz`` with
  ``allow_pickle=False`` only, each file in an envelope (schema, kind, session, run, site,
  iteration, digest of the content, optionally signed with a shared key) checked before use
  (`aia.folder.codec`). Files that fail are ignored and logged.
- A site runs only algorithms registered in its own installation (`register`), named in the
  run's description, with plain-data parameters; its problem comes from its own data file.
- Writes are atomic (a temporary name, then ``os.replace``); readers match names exactly,
  so partial files and sync-client copies are ignored; every file lives under its session
  and run, and order comes from sequence numbers, never from clocks.
- A site that starts again picks its runs up; a central that starts again with the same
  session name replays the recorded answers up to the last complete iteration. A site's
  error leaves the session open: errors are not replayed but asked again, so once the site
  is fixed the same central resumes.
- Both sides wait on file events (watchdog) and look every ``poll`` seconds anyway, for
  folders that send none (`aia.folder.watch`).

See `aia.folder.layout` for the files, `aia.folder.central` and `aia.folder.site` for each
side.
"""

from .central import FolderCluster
from .folder_run import FolderRun, SitesTimeoutError
from .codec import Rejected
from .registry import npz_problem, register, register_message
from .site import serve

__all__ = sorted([
    "FolderCluster",
    "FolderRun",
    "Rejected",
    "SitesTimeoutError",
    "npz_problem",
    "register",
    "register_message",
    "serve",
])
