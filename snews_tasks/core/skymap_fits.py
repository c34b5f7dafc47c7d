"""The sky map as a FITS file that astronomers' tools open (healpy, ligo.skymap, Aladin).

The layout is the one of the HEALPix FITS convention used for gravitational-wave sky maps: an
empty primary HDU and a binary table with one PROB column (probability per pixel, summing to 1),
ORDERING=RING, COORDSYS=C (equatorial), INDXSCHM=IMPLICIT. OBJECT names the alert, DATE-OBS and
MJD-OBS give the event time, INSTRUME lists the detectors used (comma-separated, as
ligo.skymap reads it). The file is built in memory: the caller decides where it is stored.
"""

from __future__ import annotations

import io

import numpy as np
from astropy.io import fits
from astropy.time import Time

from snews_tasks.core.localization import NS_PER_S, Localization

CREATOR = "snews_tasks"


def fits_bytes(
    localization: Localization, alert_id: str | None = None, revision: int | None = None
) -> bytes:
    """The FITS file of the map."""
    seconds, rest = divmod(localization.event_time_ns, NS_PER_S)
    event_time = Time(float(seconds), rest / NS_PER_S, format="unix", scale="utc")
    column = fits.Column(
        name="PROB",
        format="D",
        unit="pix-1",
        array=np.asarray(localization.probability, dtype=np.float64),
    )
    table = fits.BinTableHDU.from_columns([column], name="PROB")
    npix = localization.probability.size
    cards: list[tuple[str, object, str]] = [
        ("PIXTYPE", "HEALPIX", "HEALPIX pixelisation"),
        ("ORDERING", "RING", "Pixel ordering scheme: RING"),
        ("COORDSYS", "C", "Ecliptic, Galactic or Celestial (equatorial)"),
        ("NSIDE", localization.nside, "Resolution parameter of HEALPIX"),
        ("INDXSCHM", "IMPLICIT", "Indexing: IMPLICIT or EXPLICIT"),
        ("FIRSTPIX", 0, "First pixel # (0 based)"),
        ("LASTPIX", npix - 1, "Last pixel # (0 based)"),
        ("OBJECT", alert_id or "", "SNEWS alert id"),
        ("DATE-OBS", event_time.isot, "UTC date of the first neutrino time used"),
        ("MJD-OBS", event_time.mjd, "modified Julian date of DATE-OBS"),
        ("INSTRUME", ",".join(localization.detectors), "detectors used"),
        ("CREATOR", CREATOR, "program that created this file"),
    ]
    if revision is not None:
        cards.append(("REVISION", revision, "SNEWS alert revision"))
    for keyword, value, comment in cards:
        table.header[keyword] = (value, comment)
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(buffer)
    return buffer.getvalue()
