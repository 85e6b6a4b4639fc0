"""Imported first by megallm.parallel.local_world's fork server (its preload list): importing it
makes the server die with the process that started it.

Python's fork server exits once its client has gone, but only between requests: while it
imports the heavy preloaded modules (tens of seconds on a busy machine) it notices nothing,
then serves a request its dead client queued, and that rank waits in its rendezvous for
peers that never come. A parent-death signal (megallm.parallel.lifetime) ends it at any
moment, and each rank, which asks for the same about the server, with it. The kernel sends it
when the thread that started the server exits: local_world starts it from the caller's thread.
"""

import signal

from megallm.parallel.lifetime import die_with_parent

die_with_parent(signal.SIGKILL)
