"""Open tracks that survive a change of owner: the camera's tracker and event engine in Redis.

When a decoder replica dies, the camera's next owner continues its tracks: a car seen on both
sides keeps its id, ends once (``track_end`` from the new owner), and crosses a line once.

- **What**: every ``tracker.snapshot_every`` tracked frames, the tracker's state (ByteTrack's
  tracked and lost tracks with their Kalman mean and covariance, its frame count, next id and
  clock) taken right after that frame was tracked, and the event engine's state taken right
  after the same frame was published — so both describe exactly the frames published up to it.
  JSON only (``percept.track-state/v1``), bounded (`MAX_STATE_BYTES`; each part bounds its
  tracks), in the hash ``<prefix>:trackstate:<camera>`` (``v``, ``seq``, ``json``).
- **How**: through the publisher's queue, after the frame it describes (so it never lands before
  that frame), with the same lease check as the camera hash (`pipeline/lease.py` FENCED_HSET): a
  replica that lost the camera cannot overwrite its new owner's state.
- **Restore** (`restore_tracking`, at camera start): the snapshot, then the frames published
  after it (read back from the detections stream) replayed through both: the tracker follows
  the published ids, the engine's events are already on the events stream and are dropped. The
  state then equals the dead owner's after its last published frame. New ids start above the
  highest id the stream has had. A camera that stops cleanly ends its tracks (``track_end``)
  and leaves a ``closed`` state: its next owner starts afresh. A snapshot names the camera's
  source (`source_of`): a camera back with another URL ends the tracks it left, after the
  replay, and starts afresh; so does one back without tracking (`end_left_tracks`). A snapshot
  whose frames cannot be replayed (too many since, a zone that no longer fits) ends its tracks
  once, brought up to the events stream first (`settle_left_tracks`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlsplit

import redis

from . import track_replay
from .config import TrackerConfig
from .event_handover import fitted_json
from .events import EventEngine, events_json, margins_of
from .redact import redact_url
from .schema import FrameMeta
from .source_types import is_file_url
from .tracking import ObjectTracker

if TYPE_CHECKING:
    from .config import CameraConfig
    from .publish import Publisher

log = logging.getLogger("percept.track_state")

STATE_SCHEMA = "percept.track-state/v1"
MAX_STATE_BYTES = 2 * 2**20  # a bigger snapshot is not written (logged): the last one stays
SETTLE_EVENTS_MAX = 100_000  # events read after a snapshot that cannot be replayed (`settle_left_tracks`)


class TrackSnapshots:
    """Writes one camera's snapshots (see the module doc); used by its conductor, in seq order."""

    def __init__(self, publisher: Publisher, camera: str, *, every: int, resumed: tuple[int, float] | None = None,
                 hands_over: bool = True, source: str | None = None):
        self.publisher = publisher
        self.camera = camera
        self.every = every
        self.source = source  # `source_of` the camera: tracks go on only from the same source
        # (seq, frame_ts) of the newest frame the restored state describes (None: started afresh)
        self.resumed = resumed
        # a handover keeps the open tracks (a live camera with snapshots on; a file restarts elsewhere)
        self.hands_over = hands_over and every > 0
        self.written = 0
        self._frames = 0
        self._held: dict[int, dict[str, Any]] = {}  # seq → tracker state taken when it was tracked
        self._skip_logged = False
        self._trim_logged = False
        self._soon = False  # the next frame tracked is snapshotted (`geometry_changed`)

    def tracked(self, seq: int, tracker: ObjectTracker) -> None:
        """Frame ``seq`` was just tracked: the first and every ``every``-th one (with ``every``
        0 the first only), and the first after a zone or line change, keep the tracker's state
        (the first: an owner killed before the ``every``-th frame, or with none, leaves its
        tracks to the next, not open for good)."""
        self._frames += 1
        if self._frames == 1 or self._soon or (self.every and self._frames % self.every == 0):
            self._held[seq] = tracker.snapshot()
            self._soon = False

    def geometry_changed(self) -> None:
        """The zones or lines changed: the next frame tracked is snapshotted, so that a next owner
        replays the frames after it under the new ones and those before under the old (the
        snapshot's own, `restore_tracking`)."""
        self._soon = True

    def published(self, meta: FrameMeta, events: EventEngine) -> None:
        """Frame ``meta.seq`` was just handed to the publisher, after every frame before it."""
        for seq in [s for s in self._held if s < meta.seq]:  # frames that failed: never published
            del self._held[seq]
            self._soon = True  # its snapshot (the first, one after a zone change) is taken of the next frame
        tracker = self._held.pop(meta.seq, None)
        if tracker is not None:
            self._write(meta.seq, {"frame_ts": meta.frame_ts, "tracker": tracker, "events": events.snapshot()})

    def handed_over(self, seq: int, frame_ts: float, tracker: ObjectTracker, events: EventEngine) -> bool:
        """The camera stops here to move to another replica, ``seq`` the newest frame tracked
        and published: a snapshot of both as they are, which its next owner continues from;
        False if it could not be written (too big, not JSON)."""
        self._held.clear()
        return self._write(seq, {"frame_ts": frame_ts, "tracker": tracker.snapshot(), "events": events.snapshot()})

    def closed(self, seq: int, events: EventEngine | None = None) -> None:
        """The camera stopped here and ended its tracks: its next owner starts afresh, its pixel
        zones and lines still in the frame size they were set in (``events``: `pixel_frames`)."""
        self._held.clear()
        self._soon = True  # (tracks ended with the camera quiet, it goes on: its next tracked frame's snapshot)
        self._write(seq, {"closed": True, **({"events": pixel_frames(events)} if events is not None else {})})

    def _write(self, seq: int, body: Mapping[str, Any]) -> bool:
        try:
            source = {"source": self.source} if self.source is not None and "closed" not in body else {}
            doc = {"schema": STATE_SCHEMA, "camera": self.camera, "seq": seq, **source, **body}
            text, kept = fitted_json(doc, MAX_STATE_BYTES)  # (a crowd's ~2800 open tracks: none was written)
            if kept is not None and not self._trim_logged:
                log.warning("camera %s: track state holds %d of its open tracks, to fit %d bytes (the others end "
                            "without track_end at a next owner)", self.camera, kept, MAX_STATE_BYTES)
                self._trim_logged = True
        except ValueError as exc:  # a NaN somewhere: the last good snapshot stays
            return self._skip(f"not JSON ({exc})")
        if len(text) > MAX_STATE_BYTES:
            return self._skip(f"{len(text)} bytes (limit {MAX_STATE_BYTES})")
        self.publisher.fenced_hset(self.camera, self.publisher.keys.trackstate(self.camera),
                                   {"v": "1", "seq": str(seq), "json": text})
        self.written += 1
        return True

    def _skip(self, why: str) -> bool:
        if not self._skip_logged:
            log.warning("camera %s: track state not saved: %s", self.camera, why)
            self._skip_logged = True
        return False


def leave_tracks(publisher: Publisher, camera_id: str, events: EventEngine, snapshots: TrackSnapshots | None,
                 last: tuple[int, float], *, tracker: ObjectTracker | None, handing_over: bool = False) -> None:
    """A camera stops here, ``last`` (seq, frame_ts) the newest frame its tracks describe (the
    newest it published, or where it resumed them). Handed over to another replica (a scale-up:
    ``tracker`` given, every frame it tracked published, `TrackSnapshots.hands_over`): its open
    tracks go on there, from a snapshot taken now; handed over with frames tracked but not
    published, from the last snapshot written (its next owner replays what was published since,
    as after a crash). Otherwise — or if that snapshot cannot be written — they end here (``track_end``, zones left) and the state says ``closed``: its next
    owner starts afresh (``handing_over`` without ``tracker``: said in the log)."""
    seq, frame_ts = last
    if tracker is not None and snapshots is not None and snapshots.hands_over:
        if snapshots.handed_over(seq, frame_ts, tracker, events):
            return
        log.warning("camera %s: handed over without its tracks (their snapshot could not be written): they end",
                    camera_id)
    elif handing_over and snapshots is not None and snapshots.hands_over:
        if snapshots.written or snapshots.resumed is not None:
            # no snapshot of the frames it published alone, but an earlier one: its next owner
            # replays the frames published since, as after a crash (ending them here made every
            # car seen on both sides two tracks)
            log.info("camera %s: handed over with frames tracked but not published: its next owner continues "
                     "its tracks from their last snapshot", camera_id)
            return
        log.info("camera %s: handed over with frames tracked but not published: its tracks end", camera_id)
    end_tracks(publisher, camera_id, events, last, snapshots)


def end_tracks(publisher: Publisher, camera_id: str, events: EventEngine, last: tuple[int, float],
               snapshots: TrackSnapshots | None = None) -> None:
    """Every open track ends at ``last`` (seq, frame_ts: the newest frame they describe; the
    events' ``ts``, however long ago) with ``track_end`` and zones left; they are published now
    (their stream ids). The state (when ``snapshots`` writes one) says ``closed``: the camera's
    next owner starts afresh."""
    seq, frame_ts = last
    ended = events.close(seq, frame_ts)
    publisher.publish_events(camera_id, time.time(), events_json(ended), events.take_counts())
    if snapshots is not None:
        snapshots.closed(seq, events)


def pixel_frames(events: EventEngine) -> dict[str, Any]:
    """The part of an engine's snapshot that says which frame size its pixel zones and lines are
    in (`restored_pixel_sizes` reads it): a camera restarted after a change of resolution keeps
    them where they were drawn (they were read as pixels of its first frame again)."""
    state = events.snapshot()
    return {k: state[k] for k in ("pixel_sizes", "zones", "lines")}


def stored_pixel_frames(client: redis.Redis, keys: Any, camera_id: str) -> dict[str, Any]:
    """`pixel_frames` of the camera's last snapshot (what `EventEngine.seed_pixel_sizes` reads),
    {} when there is none or it cannot be read."""
    try:
        state = json.loads(client.hget(keys.trackstate(camera_id), "json") or b"{}")
        return dict(state.get("events") or {})
    except (TypeError, ValueError, AttributeError, redis.ResponseError):  # (WRONGTYPE: not percept's key)
        return {}


def source_of(camera: CameraConfig) -> str:
    """What a snapshot names as its camera's source: a digest of the URL as the replica opens it
    (``${VAR}``s expanded), credentials taken out first (`redact_url`), and the values of its
    variables too (`CameraConfig.secrets`: ``?pin=${CAM_DOCK_PIN}`` is no password name, and an
    unsalted digest of a 6-digit pin is undone in a second by anyone reading Redis), then with the
    host and port it names; a new password is the same source."""
    shown = redact_url(camera.url)
    scrubbed = shown
    for secret in sorted(camera.secrets, key=len, reverse=True):
        scrubbed = scrubbed.replace(secret, "***")
    if scrubbed != shown:  # (else as before: the digests of snapshots written earlier stay the same)
        try:
            where = urlsplit(shown).netloc.rpartition("@")[2]
        except ValueError:
            where = ""
        shown = f"{where} {scrubbed}"
    return hashlib.sha256(shown.encode()).hexdigest()[:16]


def end_left_tracks(publisher: Publisher, camera: CameraConfig, cfg: TrackerConfig, *, track_id_max: int) -> int:
    """End the open tracks a camera's snapshot left (restored as a next owner would, then ended
    at the newest frame it describes) when nobody will continue them: the camera was removed,
    or runs without tracking now. How many; 0 without an open snapshot (or one that cannot be
    continued: those are left; one whose frames cannot be replayed: those it settled). Under the
    camera's lease. Blocking: call it in a thread."""
    _, events, restored = restore_tracking(publisher, camera, cfg, track_id_max=track_id_max,
                                           file_time=is_file_url(camera.url) and not camera.realtime,
                                           check_source=False)
    if restored.last is None:
        return restored.settled
    n = len(events.open_tracks)
    end_tracks(publisher, camera.id, events, restored.last, TrackSnapshots(publisher, camera.id, every=0))
    log.info("camera %s: the %d open tracks its snapshot left end (nobody continues them)", camera.id, n)
    return n


@dataclass
class Restored:
    """What `restore_tracking` did: ``seq`` of the snapshot (None: started afresh), frames
    replayed, objects whose replayed id differed from the published one, and why not (if not)."""

    seq: int | None = None
    replayed: int = 0
    differed: int = 0
    why_not: str = ""
    last: tuple[int, float] | None = None  # (seq, frame_ts) of the newest frame the state describes
    settled: int = 0  # tracks ended at once, the frames since the snapshot not replayable (`settle_left_tracks`)


def open_tracking(
    publisher: Publisher, camera: CameraConfig, cfg: TrackerConfig, *, track_id_max: int, is_file: bool,
    lease_ttl_s: float = 0.0,
) -> tuple[ObjectTracker | None, EventEngine | None, TrackSnapshots | None]:
    """A starting camera's tracker, event engine and snapshot writer (all None without tracking),
    continuing what its previous owner left (`restore_tracking`). Blocking: call it in a thread."""
    if not cfg.enabled:  # (a snapshot an earlier version left open: its tracks end)
        end_left_tracks(publisher, camera, cfg, track_id_max=track_id_max)
        return None, None, None
    # a file starts from its beginning again: tracks an owner that died left open end (a clean
    # stop ended them), and its tracks start afresh (from the `closed` written, once it is in)
    if is_file and end_left_tracks(publisher, camera, cfg, track_id_max=track_id_max) and not publisher.flush(5.0):
        tracker = ObjectTracker(cfg, id_offset=track_id_max, fps=camera.fps, file_time=not camera.realtime)
        events = EventEngine.for_camera(camera, track_buffer=cfg.track_buffer, file_time=not camera.realtime)
        return tracker, events, TrackSnapshots(publisher, camera.id, every=cfg.snapshot_every, hands_over=False,
                                               source=source_of(camera))
    tracker, events, restored = restore_tracking(publisher, camera, cfg, track_id_max=track_id_max,
                                                 file_time=is_file and not camera.realtime, lease_ttl_s=lease_ttl_s)
    return tracker, events, TrackSnapshots(publisher, camera.id, every=cfg.snapshot_every, resumed=restored.last,
                                           hands_over=not is_file, source=source_of(camera))


def restore_tracking(
    publisher: Publisher, camera: CameraConfig, cfg: TrackerConfig, *, track_id_max: int, file_time: bool,
    check_source: bool = True, lease_ttl_s: float = 0.0,
) -> tuple[ObjectTracker, EventEngine, Restored]:
    """The camera's tracker and event engine: continued from its snapshot and the frames
    published since (see the module doc), or new ones (``Restored.why_not`` says why).
    ``check_source``: a snapshot of another source (`source_of`) ends its tracks instead.
    Blocking (Redis): call it in a thread."""
    state: Any = None

    def fresh(why: str, settled: int = 0) -> tuple[ObjectTracker, EventEngine, Restored]:
        tracker = ObjectTracker(cfg, id_offset=track_id_max, fps=camera.fps, file_time=file_time)
        events = EventEngine.for_camera(camera, track_buffer=cfg.track_buffer, file_time=file_time)
        try:  # the tracks start afresh, the pixel zones and lines stay in the frame size they were set in
            events.seed_pixel_sizes(state.get("events") or {})
        except (AttributeError, TypeError, ValueError, IndexError):  # no snapshot, or not one that says
            pass
        return tracker, events, Restored(why_not=why, settled=settled)

    raw = publisher.client.hget(publisher.keys.trackstate(camera.id), "json")
    if raw is None:
        return fresh("no snapshot")
    try:
        state = json.loads(raw)
        if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA or state.get("camera") != camera.id:
            raise ValueError(f"not a {STATE_SCHEMA} snapshot of camera {camera.id!r}")
        if state.get("closed"):
            return fresh("closed")
        seq, since = int(state["seq"]), float(state["frame_ts"])
        if not (math.isfinite(since) and since >= 0):  # (-1 made the replay's stream id a Redis error)
            raise ValueError(f"frame_ts {since}")
        tracker = ObjectTracker.restore(state["tracker"], cfg, fps=camera.fps, file_time=file_time)
        # the frames since were published under the snapshot's zones and lines (a change makes a
        # snapshot at once): replayed under them, the camera's own from the next frame on
        drawn = state["events"]
        margins = {k: float(drawn.get(k, v)) for k, v in margins_of(camera).items()}  # (the snapshot's too)
        events = EventEngine.restore(drawn, camera.id, drawn.get("zones", camera.zones), drawn.get("lines", camera.lines),
                                     anchor=drawn.get("anchor") or camera.anchor, track_buffer=cfg.track_buffer,
                                     file_time=file_time, **margins)
    except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError, IndexError) as exc:  # (a part that is no object)
        log.warning("camera %s: track state not restored: %s", camera.id, exc)
        return fresh(f"unreadable: {exc}")
    try:
        frames = track_replay.published_after(publisher, camera.id, seq, since,
                                              limit=max(10 * cfg.snapshot_every, 1000))
    except (ValueError, redis.ResponseError) as exc:
        log.warning("camera %s: track state not restored: %s", camera.id, exc)
        return fresh(str(exc), _settled(publisher, camera, cfg, state))
    done = Restored(seq, last=(seq, since))
    # open tracks the tracker's snapshot left out (past its 512): held open through the replay, as
    # their owner held them (ended there, their track_end was dropped with the replay's events)
    held = set(events.open_tracks) - tracker.alive_ids()
    replaying: int | None = None  # the seq of the frame being replayed
    try:
        for result in frames:
            replaying = result.meta.seq
            ours = tracker.update(result.objects, (result.meta.height, result.meta.width),
                                  ts=tracker.time_of(result.meta))
            done.differed += tracker.adopt_ids(ours.track_ids, result.objects.track_ids)
            events.update(result, tracker.alive_ids() | held, tracker.origins)  # its events are on the stream already
            done.replayed += 1
            done.last = (result.meta.seq, result.meta.frame_ts)
            size = (result.meta.width, result.meta.height)
        replaying = None
        events.reconfigure(camera.zones, camera.lines, anchor=camera.anchor, **margins_of(camera))
        if done.replayed:  # the camera's own zones and lines fit its frames (else it cannot go on)
            events.geometry(*size)
    except Exception as exc:  # noqa: BLE001 - a zone that no longer fits the frame (GeometryError), a damaged track, …
        where = f"replaying seq {replaying}" if replaying is not None else "its zones and lines on its frames"
        log.warning("camera %s: track state not restored: %s: %s", camera.id, where, exc)
        return fresh(str(exc), _settled(publisher, camera, cfg, state))
    if held and done.replayed:  # those their owner ended since go; the others end at the first live frame
        events.apply_published(track_replay.ended_since(publisher, camera.id, seq, since, held))
    events.take_counts()
    if check_source and state.get("source", source_of(camera)) != source_of(camera):  # (older ones name none)
        log.info("camera %s: its URL changed since its snapshot: its %d open tracks end", camera.id, len(events.open_tracks))
        end_tracks(publisher, camera.id, events, done.last, TrackSnapshots(publisher, camera.id, every=0))
        return fresh("another source")
    tracker.raise_next_id(track_id_max)
    tracker.resume_across_pause(lease_ttl_s)  # the handover's pause: a track goes on where the next frame finds it
    if check_source:  # (else restored to be ended, `end_left_tracks`, which says so: "continued" contradicted it)
        log.info("camera %s: %d open tracks continued from seq %d (+%d frames replayed, %d ids differed)",
                 camera.id, len(events.open_tracks), seq, done.replayed, done.differed)
    return tracker, events, done


def _newest_frame(publisher: Publisher, camera_id: str) -> tuple[int, float] | None:
    """(seq, frame_ts) of the camera's newest published frame; None if none can be read. Primes
    the publisher's id clock with it (`Publisher.last_published`): events written next get ids
    above the stream's top."""
    newest = publisher.newest_entry(camera_id)
    try:
        payload = json.loads(newest[1][b"json"])  # type: ignore[index]
        return int(payload["seq"]), float(payload["frame_ts"])
    except (KeyError, TypeError, ValueError):
        return None


def _settled(publisher: Publisher, camera: CameraConfig, cfg: TrackerConfig, state: Mapping[str, Any]) -> int:
    """`settle_left_tracks`, or 0 where a damaged snapshot cannot say which tracks it left open."""
    try:
        return settle_left_tracks(publisher, camera, cfg, state)
    except redis.ConnectionError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged snapshot never keeps its camera from starting
        log.warning("camera %s: the tracks its snapshot left open are not ended: %s", camera.id, exc)
        return 0


def settle_left_tracks(publisher: Publisher, camera: CameraConfig, cfg: TrackerConfig, state: Mapping[str, Any]) -> int:
    """A readable snapshot whose frames cannot be replayed (too many since, a zone that no longer
    fits): its open tracks, and those started since, end once, at the camera's newest frame —
    brought up to the events stream first (`EventEngine.apply_published`), so that a track that
    ended since does not end twice. How many ended (more than `SETTLE_EVENTS_MAX` events since:
    none, logged)."""
    events = EventEngine.restore(state["events"], camera.id, camera.zones, camera.lines, anchor=camera.anchor,
                                 track_buffer=cfg.track_buffer, file_time=bool(state["events"].get("file_time")),
                                 **margins_of(camera))
    seq, since = int(state["seq"]), float(state["frame_ts"])
    if track_replay.trimmed_after(publisher, camera.id, int(since * 1000)):
        log.warning("camera %s: its events since its snapshot were trimmed (redis.maxlen): its open tracks are "
                    "left without track_end (some may have ended already)", camera.id)
        return 0
    payloads: list[dict[str, Any]] = []
    for payload in track_replay.events_since(publisher, camera.id, seq, since):
        payloads.append(payload)
        if len(payloads) > SETTLE_EVENTS_MAX:
            log.warning("camera %s: more than %d events since its snapshot: its open tracks are left without "
                        "track_end", camera.id, SETTLE_EVENTS_MAX)
            return 0
    events.apply_published(payloads)
    n = len(events.open_tracks)
    newest = _newest_frame(publisher, camera.id) or (seq, since)  # (ids above the top, too)
    end_tracks(publisher, camera.id, events, newest, TrackSnapshots(publisher, camera.id, every=0))
    log.info("camera %s: the %d tracks its snapshot and the events since left open end", camera.id, n)
    return n
