"""The localization queue: where on the sky each coincidence revision points.

The writer hands every alert revision with two or more detectors and no localization yet to
this queue (`core.routing.needs_localization`), after it has published the alert: the first
alert never waits for a sky map. The task reads the members' timing-tier messages from the
archive, localizes (`core.alert_localization`), stores the FITS map and its PNG picture in
GridFS (`adapters.skymap_store`, served by the console at `<public base URL>/skymaps/<name>`)
and sends the result to the writer (`snews.coincidence.attach_localization`), which commits
it as the coincidence's next revision if its members have not changed meanwhile.

Bad data (a member without a site, one usable detector, times no direction explains) is a
refusal whose reason the next revision carries; the task fails only on a malformed alert
(recorded) and retries MongoDB and broker outages. Workers of this queue (workers/localize)
scale out; each loads the sites file and warms astropy and matplotlib before it takes work.
"""

from __future__ import annotations

import functools
import logging
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any

from celery import signals
from kombu.exceptions import OperationalError

from ..adapters.retry_policies import localization_policy
from ..adapters.skymap_store import SkymapStore
from ..core.documents import alert_key
from ..core.localization_request import attach_payload, reason_of, request_of
from ..core.routing import FailureKind, Queue, TaskName
from ..core.sites import Site, SiteError, load_sites
from ..core.times import NS_PER_S, format_time_ns
from .app import app
from .base import DeliveryTask
from .context import resource, settings
from .sender import CelerySender
from .storage import worker_archive

if TYPE_CHECKING:
    from ..core.alert_localization import Result

log = logging.getLogger(__name__)

#: A localization takes well under a second; one that takes minutes is stuck.
TIME_LIMIT_S = 300
WARM_UP_DETECTORS = ("IceCube", "Super-K")


@functools.cache
def detector_sites() -> dict[str, Site]:
    """The configured sites (SNEWS_DETECTOR_SITES_FILE, else the shipped file), read once."""
    return load_sites(settings().detector_sites_file)


def skymap_store() -> SkymapStore:
    def open_store() -> SkymapStore:
        store = SkymapStore(worker_archive().db)
        store.ensure_indexes()
        return store

    return resource("skymap-store", open_store)


def sky_maps() -> ModuleType:
    """`core.alert_localization`, imported on first use: the sky-map stack under it (astropy,
    healpy, matplotlib) takes seconds to import, which only localize workers should pay, not
    every worker that imports this module to know its tasks."""
    from ..core import alert_localization

    return alert_localization


def skymap_url(name: str) -> str:
    return f"{settings().public_base_url}/skymaps/{name}"


def localize_and_attach(alert: dict[str, Any]) -> str:
    """One attempt: localize, store the files, send the result to the writer."""
    request = request_of(alert)
    window_ns = round(settings().coincidence_threshold_s * NS_PER_S)
    alert_localization = sky_maps()
    timing = alert_localization.timing_messages_for(
        request,
        lambda detector, t_ns: worker_archive().timing_tier_messages(
            detector, request.is_test, t_ns - window_ns, t_ns + window_ns
        ),
        window_ns,
    )
    started = time.perf_counter()
    result: Result = alert_localization.run(
        request, detector_sites(), settings().skymap_nside, timing
    )
    meta = {"alert_id": request.alert_id, "revision": request.revision, "is_test": request.is_test}
    fits_file = result.map_file()
    if fits_file is not None:
        skymap_store().put(*fits_file, meta)
    summary = result.summary(skymap_url)
    CelerySender()(TaskName.ATTACH_LOCALIZATION, attach_payload(request, summary), {})
    sent_s = time.perf_counter() - started
    # The picture after the result: the revision need not wait for matplotlib. Slack, which
    # posts it, waits for it (tasks.slack); a retry of this task sends the result again, and
    # the writer drops the repeat.
    picture = result.picture_file()
    if picture is not None:
        skymap_store().put(*picture, meta)
    reason = reason_of(summary)
    log.info(
        "alert %s revision %d: %s (result sent after %.0f ms, picture stored after %.0f ms)",
        request.alert_id,
        request.revision,
        reason,
        sent_s * 1e3,
        (time.perf_counter() - started) * 1e3,
    )
    return reason


@app.task(base=DeliveryTask, name=TaskName.LOCALIZE, bind=True, time_limit=TIME_LIMIT_S)
def localize_alert(self: DeliveryTask, alert: dict) -> str:
    """Localize one alert revision and hand the result to the writer."""
    return self.deliver(
        kind=FailureKind.ALERT_LOCALIZATION,
        records={alert_key(alert): alert},
        policy=localization_policy(settings(), (OperationalError,)),
        attempt=lambda: localize_and_attach(alert),
    )


def warm_up(sites: dict[str, Site], nside: int) -> float:
    """Load what the first localization would otherwise load while an alert waits: astropy's
    Earth orientation table and transforms, the pixel grid, matplotlib's fonts. Seconds taken."""
    started = time.perf_counter()
    present = [d for d in WARM_UP_DETECTORS if d in sites] or sorted(sites)[:2]
    alert = {
        "alert_id": "warm-up",
        "revision": 1,
        "is_test": True,
        "detector_names": present,
        "neutrino_times_utc": [format_time_ns(time.time_ns())] * len(present),
    }
    sky_maps().run(request_of(alert), sites, nside, {}).files()
    return time.perf_counter() - started


@signals.celeryd_after_setup.connect
def _warm_localization_worker(instance: Any = None, **_: Any) -> None:
    """In the main process, before the pool forks: its children start warm. A sites file
    that cannot be used stops the worker here, naming the detector and field."""
    if Queue.LOCALIZATION not in instance.app.amqp.queues.consume_from:
        return
    try:
        sites = detector_sites()
    except (OSError, SiteError) as error:
        raise SystemExit(f"detector sites: {error}") from error
    seconds = warm_up(sites, settings().skymap_nside)
    log.info("localization ready: %d detector sites, warmed up in %.2f s", len(sites), seconds)
