"""The citizen page's report forms: home, a tip, an accident, and the code and PIN after sending.

Both forms go through the same use case as the chat (:func:`handlers.citizen.submit.
submit_report`): the same draft fields and limits, the same report allowance, storage, routing,
officers' card, code and PIN. A form with a mistake comes back with the error beside the field and
everything typed (and every image already cleaned) still in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from aiohttp import web

from bot.web.evidence import seal, take_evidence
from bot.web.forms import (
    FIELD_MAX,
    Form,
    FormTooLarge,
    coordinates,
    phone_number,
    read_form,
    short_text_error,
    text,
)
from bot.web.guard import CHALLENGE_USED, CHALLENGE_WRONG, FORM_LANG, csrf_ok, locale_of
from bot.web.inbox import inbox_key, new_inbox_id
from bot.web.site import DATABASE_ERRORS, Site, database_failed, render, site_of
from handlers.channels import ChannelName
from handlers.citizen.accident import INJURED, PLACE_MATCH_SURE
from handlers.citizen.draft import (
    DESCRIPTION_MAX,
    DESCRIPTION_MIN,
    PLACE_QUERY_MAX,
    SHORT_TEXT_MAX,
    DraftInput,
    check_description,
)
from handlers.citizen.submit import Allowance, RateLimited, submit_report
from handlers.domain import CATEGORIES, CONTACT_MODES, OCCURRED
from handlers.i18n import t
from handlers.intake import Origin
from handlers.places import PlaceMatch
from storage.repositories import RateLimits
from storage.types import utcnow

RATE_CHALLENGE = "web_challenge"
CHALLENGE_WINDOW = timedelta(hours=4)


@dataclass
class Checked:
    """A form read and checked: the errors by field, and what the page shows again."""

    locale: str
    values: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)
    choices: list[PlaceMatch] = field(default_factory=list)
    media: list[dict[str, Any]] = field(default_factory=list)
    nonce: str | None = None


def valid_unit(site: Site, code: str | None) -> str | None:
    """``code`` if it names a unit of the catalogue; a forged value is just ignored."""
    return code if code and site.unit_name(code) is not None else None


async def home(request: web.Request) -> web.StreamResponse:
    unit = valid_unit(site_of(request), request.query.get("u"))
    return render(request, "home.html", unit=unit or "")


def form_page(
    request: web.Request, template: str, checked: Checked | None, status: int = 200
) -> web.Response:
    site = site_of(request)
    locale = locale_of(request, site.service.settings.default_locale)
    values = checked.values if checked is not None else {}
    if checked is None:
        values = {"unit": valid_unit(site, request.query.get("u")) or ""}
    keep_challenge = checked is not None and checked.nonce is not None
    challenge = site.challenges.new(locale)
    return render(
        request,
        template,
        status=status,
        values=values,
        errors=checked.errors if checked is not None else {},
        choices=checked.choices if checked is not None else [],
        kept=seal(site.keyring, checked.media) if checked is not None else "",
        kept_count=len(checked.media) if checked is not None else 0,
        challenge_question=values.get("challenge_question", challenge.question)
        if keep_challenge
        else challenge.question,
        challenge_token=values.get("challenge_token", challenge.token)
        if keep_challenge
        else challenge.token,
        challenge_answer=values.get("challenge", "") if keep_challenge else "",
        unit_name=site.unit_name(values.get("unit")),
        categories=CATEGORIES,
        occurred=OCCURRED,
        contact_modes=CONTACT_MODES,
        injured=list(INJURED),
        max_media=site.service.settings.max_media_per_report,
        limits={"description": DESCRIPTION_MAX, "short": SHORT_TEXT_MAX},
    )


async def tip_form(request: web.Request) -> web.StreamResponse:
    return form_page(request, "tip.html", None)


async def accident_form(request: web.Request) -> web.StreamResponse:
    return form_page(request, "accident.html", None)


async def read_checked(request: web.Request, *, max_files: int) -> tuple[Form, Checked] | None:
    site = site_of(request)
    settings = site.service.settings
    try:
        form = await read_form(
            request, max_total=settings.web_upload_max_mb * 1024 * 1024, max_files=max_files
        )
    except FormTooLarge:
        raise web.HTTPRequestEntityTooLarge(
            max_size=settings.web_upload_max_mb * 1024 * 1024, actual_size=0
        ) from None
    request[FORM_LANG] = form.get("lang")
    locale = locale_of(request, settings.default_locale)
    if not csrf_ok(request, form.get("csrf")):
        return None
    checked = Checked(locale, {k: v for k, v in form.fields.items() if k not in ("csrf", "kept")})
    nonce, refusal = site.challenges.nonce(form.get("challenge_token"), form.get("challenge"))
    if nonce is None:
        checked.errors["challenge"] = t(locale, refusal or CHALLENGE_WRONG)
    else:
        checked.nonce = nonce
    return form, checked


def refused(request: web.Request) -> web.Response:
    return render(request, "message.html", status=403, message="web.err.csrf")


def resolve_unit(site: Site, form: Form, checked: Checked) -> tuple[str | None, bool]:
    """The unit the tipster chose, typed or located; ``(None, True)`` for "I don't know"."""
    locale = checked.locale
    chosen = valid_unit(site, form.get("unit"))
    if chosen:
        return chosen, True
    query = text(form, "place_q", PLACE_QUERY_MAX)
    point = coordinates(form)
    if query:
        matches = site.service.flow.places.search(query, limit=6)
        if matches and (
            matches[0].score >= 100
            or len(matches) == 1
            or matches[0].score - matches[1].score >= 10
        ):
            return matches[0].code, True
        if matches:
            checked.choices = matches
            checked.errors["place"] = t(locale, "web.err.pick_commune")
        else:
            checked.errors["place"] = t(locale, "web.err.no_commune", query=query)
        return None, False
    if point is not None:
        locator = site.service.flow.locator
        return (locator.locate(*point) if locator is not None else None), True
    if form.get("unit_unknown"):
        return None, True
    checked.errors["place"] = t(locale, "web.err.commune_needed")
    return None, False


def database_down(
    request: web.Request, template: str, checked: Checked, exc: BaseException
) -> web.Response:
    """The form again, as typed, with the form-level "not stored, try again, call 113" error."""
    database_failed(request, exc)
    checked.errors["form"] = t(checked.locale, "web.err.database")
    return form_page(request, template, checked, status=503)


async def tip_submit(request: web.Request) -> web.StreamResponse:
    site = site_of(request)
    read = await read_checked(request, max_files=site.service.settings.max_media_per_report)
    if read is None:
        return refused(request)
    form, checked = read
    try:
        return await _tip(request, form, checked)
    except DATABASE_ERRORS as exc:
        return database_down(request, "tip.html", checked, exc)


async def _tip(request: web.Request, form: Form, checked: Checked) -> web.StreamResponse:
    site = site_of(request)
    settings = site.service.settings
    locale, errors = checked.locale, checked.errors
    category = form.get("category")
    if category not in CATEGORIES:
        errors["category"] = t(locale, "web.err.category")
    unit, _ = resolve_unit(site, form, checked)
    if unit:
        checked.values["unit"] = unit
    occurred = form.get("occurred") if form.get("occurred") in OCCURRED else "unknown"
    occurred_text = text(form, "occurred_text", FIELD_MAX)
    if problem := short_text_error(occurred_text):
        errors["occurred_text"] = t(locale, problem, limit=SHORT_TEXT_MAX)
    description = text(form, "description", FIELD_MAX)
    if problem := check_description(description):
        errors["description"] = t(
            locale,
            problem,
            limit=DESCRIPTION_MAX,
            length=len(description),
            minimum=DESCRIPTION_MIN,
        )
    contact = form.get("contact")
    phone = phone_number(form.get("phone")) if contact == "phone" else None
    if contact not in CONTACT_MODES:
        errors["contact"] = t(locale, "web.err.contact")
    elif contact == "phone" and phone is None:
        errors["phone"] = t(locale, "web.err.phone")
    checked.media = await take_evidence(
        site.service.session_factory,
        site.keyring,
        form,
        locale=locale,
        limit=settings.max_media_per_report,
        errors=errors,
    )
    point = coordinates(form)
    draft = DraftInput(
        kind="tip",
        category=category,
        unit_code=unit,
        latitude=point[0] if point else None,
        longitude=point[1] if point else None,
        place_text=text(form, "place_q", PLACE_QUERY_MAX) or None,
        occurred=occurred,
        occurred_text=occurred_text or None,
        description=description,
        media=checked.media,
    ).as_draft(contact if contact in CONTACT_MODES else "none")
    if phone is not None:
        draft["phone"] = site.keyring.encrypt({"phone": phone})
    return await submit(request, "tip.html", checked, draft)


async def accident_submit(request: web.Request) -> web.StreamResponse:
    read = await read_checked(request, max_files=1)
    if read is None:
        return refused(request)
    form, checked = read
    try:
        return await _accident(request, form, checked)
    except DATABASE_ERRORS as exc:
        return database_down(request, "accident.html", checked, exc)


async def _accident(request: web.Request, form: Form, checked: Checked) -> web.StreamResponse:
    site = site_of(request)
    locale, errors = checked.locale, checked.errors
    place = text(form, "place_q", FIELD_MAX)
    point = coordinates(form)
    unit = None
    if point is not None and site.service.flow.locator is not None:
        unit = site.service.flow.locator.locate(*point)
    if place:
        if problem := short_text_error(place):
            errors["place"] = t(locale, problem, limit=SHORT_TEXT_MAX)
        matches = site.service.flow.places.search(place, limit=1)
        if unit is None and matches and matches[0].score >= PLACE_MATCH_SURE:
            unit = matches[0].code
    elif point is None:
        errors["place"] = t(locale, "web.err.accident_place")
    injured, count = INJURED.get(form.get("injured"), INJURED["unknown"])
    checked.media = await take_evidence(
        site.service.session_factory,
        site.keyring,
        form,
        locale=locale,
        limit=1,
        errors=errors,
        field="photo",
    )
    draft = DraftInput(
        kind="emergency",
        unit_code=unit,
        latitude=point[0] if point else None,
        longitude=point[1] if point else None,
        place_text=place or None,
        occurred="now",
        injured=injured,
        injured_count=count,
        media=checked.media,
    ).as_draft("relay")
    return await submit(request, "accident.html", checked, draft)


async def submit(
    request: web.Request, template: str, checked: Checked, draft: dict[str, Any]
) -> web.StreamResponse:
    """Store the report (one transaction, as the chat does) and show its code and PIN once."""
    if checked.errors:
        return form_page(request, template, checked, status=400)
    site = site_of(request)
    service, settings = site.service, site.service.settings
    assert checked.nonce is not None
    inbox = new_inbox_id()
    origin = Origin(
        sender_key=inbox_key(site.keyring, inbox),
        channel=ChannelName.WEB,
        chat_id=inbox,
        locale=checked.locale,
    )
    try:
        async with service.session_factory() as session, session.begin():
            limits = RateLimits(session)
            used = site.keyring.keyed_hash("challenge", checked.nonce)
            if await limits.count(RATE_CHALLENGE, used, CHALLENGE_WINDOW):
                checked.nonce = None
                checked.errors["challenge"] = t(checked.locale, CHALLENGE_USED)
                return form_page(request, template, checked, status=400)
            limits.hit(RATE_CHALLENGE, used)
            submitted = await submit_report(
                session,
                draft=draft,
                origin=origin,
                keyring=site.keyring,
                pins=service.flow.pins,
                intake=service.flow.intake,
                allowance=Allowance(
                    settings.report_rate_limit,
                    timedelta(minutes=settings.report_rate_window_minutes),
                ),
                now=utcnow(),
                rate_key=site.clients.key(request),
            )
    except RateLimited as exc:
        checked.errors["form"] = t(checked.locale, "web.err.rate_limited", minutes=exc.minutes)
        return form_page(request, template, checked, status=429)
    site.kick()
    return render(
        request,
        "done.html",
        code=submitted.code,
        pin=submitted.pin,
        emergency=draft.get("kind") == "emergency",
        inbox=draft.get("contact_mode") in ("relay", "phone"),
    )


async def places(request: web.Request) -> web.StreamResponse:
    """Commune suggestions for the page's script (the same search as the chat)."""
    query = request.query.get("q", "")[:PLACE_QUERY_MAX]
    matches = site_of(request).service.flow.places.search(query, limit=8) if query else []
    return web.json_response([{"code": m.code, "name": m.name} for m in matches])
