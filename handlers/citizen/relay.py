"""The relay: a tipster answers the officers' questions, or adds to a report, anonymously.

Three ways in:

- the «Reply» button under a question (any channel with buttons), or ``/add CODE`` (+ PIN);
- on a channel with reply-to (Telegram), a reply to the relayed question *is* the answer,
  whatever else the citizen is doing: the sent question's message id is kept on its outbox row;
- on a channel without reply-to, the question says "type your answer now" and the citizen's next
  message is the answer, unless they are in the middle of a report: then one line says how to
  answer afterwards.

Every path ends with a short confirmation that the officers received the answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handlers import media as media_rules
from handlers import outbox
from handlers.channels import Capabilities
from handlers.citizen.base import (
    DRAFT_STATES,
    IMAGE_REFUSALS,
    RELAY_STATES,
    Prepared,
    State,
    Turn,
    is_image,
)
from handlers.citizen.core import FlowCore, Step
from handlers.citizen.draft import CAPTION_MAX, DESCRIPTION_MAX
from handlers.citizen.status import read_pin, verify_pin
from handlers.events import Button, Message, Reply
from handlers.i18n import t
from handlers.intake import officers_destination
from handlers.security import format_code, parse_code
from handlers.text import clean_text, substance
from storage.models import ContactRoute, OutboxMessage, RelayMessage, Report
from storage.repositories import Media, Reports

#: Where the delivery keeps the channel's id of a sent question, in the row's payload.
SENT_MESSAGE_ID = "sent_message_id"
CLOSED = ("resolved", "rejected")


def question_reply(locale: str, report_id: int, code: str, text: str, caps: Capabilities) -> Reply:
    """A relayed question as the citizen sees it, for a channel's capabilities.

    With buttons: a «Reply» button. Without reply-to: "type your answer now".
    """
    key = "relay.question" if caps.buttons or caps.reply_to else "answers.question_type_now"
    reply = Reply(text=t(locale, key, code=format_code(code), text=text))
    if caps.buttons:
        reply.buttons = [[Button(t(locale, "relay.answer_button"), f"0:rel:{report_id}")]]
    return reply


async def own_report(turn: Turn, report_id: int) -> Report | None:
    """The report if this sender filed it (their keyed hash is on its contact route)."""
    route = await turn.session.scalar(
        select(ContactRoute).where(ContactRoute.report_id == report_id)
    )
    if route is None or route.sender_key != turn.sender_key:
        return None
    return await turn.session.get(Report, report_id)


async def replied_question(turn: Turn, reply_to: str) -> Report | None:
    """The report whose relayed question (sent to this sender) ``reply_to`` names."""
    if not reply_to.isdigit() or len(reply_to) > 18:
        return None
    rows = await turn.session.scalars(
        select(OutboxMessage)
        .join(ContactRoute, ContactRoute.report_id == OutboxMessage.report_id)
        .where(
            ContactRoute.sender_key == turn.sender_key,
            OutboxMessage.kind == outbox.Kind.CITIZEN_MESSAGE,
            OutboxMessage.status == "sent",
        )
        .order_by(OutboxMessage.id.desc())
        .limit(200)
    )
    for row in rows:
        payload: dict[str, Any] = dict(row.payload or {})
        if "relay_id" in payload and str(payload.get(SENT_MESSAGE_ID)) == reply_to:
            return await turn.session.get(Report, row.report_id)
    return None


async def pending_question(turn: Turn) -> Report | None:
    """This sender's newest report that waits for their answer to the officers' question."""
    return await turn.session.scalar(
        select(Report)
        .join(ContactRoute, ContactRoute.report_id == Report.id)
        .where(ContactRoute.sender_key == turn.sender_key, Report.status == "needs_info")
        .order_by(Report.updated_at.desc(), Report.id.desc())
        .limit(1)
    )


async def start_relay(flow: FlowCore, turn: Turn, arg: str) -> None:
    report = await own_report(turn, int(arg)) if arg.isdigit() and len(arg) <= 18 else None
    if report is None:
        turn.notice("relay.not_yours", alert=True)
        return
    enter_relay(flow, turn, report, addition=False)


def enter_relay(flow: FlowCore, turn: Turn, report: Report, *, addition: bool) -> None:
    if report.status in CLOSED:
        turn.say("relay.closed")
        return
    if turn.state not in RELAY_STATES:
        flow.side_trip(turn)
    turn.data["relay"] = {"report_id": report.id, "code": report.code, "addition": addition}
    turn.state = State.RELAY
    flow.prompt(turn)


async def start_add(flow: FlowCore, turn: Turn, args: str) -> None:
    code = parse_code(clean_text(args)[:40]) if args.strip() else None
    if turn.state not in RELAY_STATES:
        flow.side_trip(turn)
    if code is None:
        if args.strip():
            turn.say("status.bad_code")
        turn.state = State.RELAY_CODE
        flow.prompt(turn)
        return
    report = await Reports(turn.session).by_code(code)
    if report is not None and await own_report(turn, report.id) is not None:
        enter_relay(flow, turn, report, addition=True)
        return
    # Not linked to this sender (no contact mode, or another account): the PIN decides.
    turn.data["relay_code"] = code
    turn.state = State.RELAY_PIN
    flow.prompt(turn)


async def relay_message(
    flow: FlowCore,
    turn: Turn,
    report: Report,
    message: Message,
    prepared: Prepared,
    *,
    addition: bool,
) -> bool:
    """Pass ``message`` to the officers on ``report``; ``False`` (and why) if it cannot go."""
    if report.status in CLOSED:
        turn.say("relay.closed")
        return False
    item = RelayMessage(report_id=report.id, direction="to_officers")
    images = [a for a in message.attachments if is_image(a)]
    if message.location is not None:
        item.latitude = message.location.latitude
        item.longitude = message.location.longitude
    elif images:
        cleaned = prepared.get(images[0].file_ref)
        if not isinstance(cleaned, media_rules.CleanImage):
            turn.say(IMAGE_REFUSALS.get(str(cleaned), "ev.failed"))
            return False
        blob = await Media(turn.session).add_blob(
            content=cleaned.content, mime=cleaned.mime, sha256=cleaned.sha256
        )
        item.media_kind = "photo"
        item.blob_id = blob.id
        item.text = clean_text(message.text or "")[:CAPTION_MAX] or None
    elif message.attachments or message.unsupported or message.contact is not None:
        turn.say("relay.expecting")
        return False
    else:
        text = clean_text(message.text or "")
        if not substance(text):
            turn.say("relay.expecting")
            return False
        if len(text) > DESCRIPTION_MAX:
            turn.say("err.too_long", limit=DESCRIPTION_MAX)
            return False
        item.text = text
    await pass_to_officers(turn.session, report, item, addition=addition, now=turn.now)
    turn.say("relay.sent", code=format_code(report.code))
    return True


async def pass_to_officers(
    session: AsyncSession, report: Report, item: RelayMessage, *, addition: bool, now: datetime
) -> None:
    """Store ``item`` (the tipster's answer or addition) and queue it for the officers; an
    answer to a question puts the report back in progress. Any channel, same transaction."""
    session.add(item)
    await session.flush()
    outbox.enqueue(
        session,
        outbox.RelayPayload(relay_id=item.id, addition=addition),
        outbox.Destination.parse(await officers_destination(session, report)),
        report_id=report.id,
    )
    reports = Reports(session)
    if report.status == "needs_info":
        reports.add_event(
            report,
            action="answered",
            actor_kind="citizen",
            from_status="needs_info",
            to_status="in_progress",
        )
        report.status = "in_progress"
        report.updated_at = now
    else:
        reports.add_event(report, action="added_info", actor_kind="citizen")


async def answer_out_of_turn(
    flow: FlowCore, turn: Turn, report: Report, message: Message, prepared: Prepared
) -> None:
    """An answer given without entering the relay step: a reply-to, or the next message on a
    channel without reply-to. The citizen then continues where they were."""
    if not await relay_message(flow, turn, report, message, prepared, addition=False):
        # Say how to answer instead, and leave what they were doing as it was.
        turn.say("answers.relay_how")
    if turn.state in DRAFT_STATES and turn.has_draft:
        turn.say("draft.resuming")
        flow.prompt(turn)
    elif turn.state is State.IDLE:
        flow.show_menu(turn)
    else:
        flow.prompt(turn)


async def hint_pending(turn: Turn) -> None:
    """Mid-report, on a channel without reply-to: say once how to answer a waiting question."""
    report = await pending_question(turn)
    if report is None or turn.data.get("relay_hint") == report.id:
        return
    turn.data["relay_hint"] = report.id
    turn.say("answers.relay_after_report", code=format_code(report.code))


class Relay(Step):
    state = State.RELAY
    choices_only = False

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        relay = turn.data.get("relay") or {}
        key = "relay.add_ask" if relay.get("addition") else "relay.ask_answer"
        turn.say(key, code=format_code(str(relay.get("code", "")))).buttons = [
            [turn.button("common.cancel", "x")]
        ]

    async def on_message(
        self, flow: FlowCore, turn: Turn, message: Message, prepared: Prepared
    ) -> None:
        relay = turn.data.get("relay")
        report = (
            await turn.session.get(Report, relay["report_id"]) if isinstance(relay, dict) else None
        )
        if report is None or not isinstance(relay, dict):
            turn.data.pop("relay", None)
            await flow.resume(turn)
            return
        text = clean_text(message.text or "")
        if not message.attachments and text == "0":
            await flow.cancel(turn)
            return
        if report.status in CLOSED:
            turn.data.pop("relay", None)
            turn.say("relay.closed")
            await flow.resume(turn)
            return
        if await relay_message(
            flow, turn, report, message, prepared, addition=bool(relay.get("addition"))
        ):
            turn.data.pop("relay", None)
            await flow.resume(turn)
        else:
            flow.prompt(turn)


class RelayCode(Step):
    state = State.RELAY_CODE
    choices_only = False

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        turn.say("relay.add_usage").buttons = [[turn.button("common.cancel", "x")]]

    async def on_message(
        self, flow: FlowCore, turn: Turn, message: Message, prepared: Prepared
    ) -> None:
        if flow.wrong_type(turn, message, expects="text"):
            flow.prompt(turn)
            return
        text = clean_text(message.text or "")
        if await flow.typed_choice(turn, text, fuzzy=False):
            return
        await start_add(flow, turn, text)


class RelayPin(Step):
    state = State.RELAY_PIN
    choices_only = False

    def prompt(self, flow: FlowCore, turn: Turn) -> None:
        code = format_code(str(turn.data.get("relay_code", "")))
        turn.say("relay.add_ask_pin", code=code).buttons = [[turn.button("common.cancel", "x")]]

    async def on_message(
        self, flow: FlowCore, turn: Turn, message: Message, prepared: Prepared
    ) -> None:
        text = clean_text(message.text or "")
        if (text == "0" or not text.isdigit()) and await flow.typed_choice(
            turn, text, fuzzy=False
        ):
            return
        entered = read_pin(flow, turn, message, "relay_code")
        if entered is None:
            return
        report = await verify_pin(flow, turn, *entered)
        turn.data.pop("relay_code", None)
        if report is None:
            await flow.resume(turn)
            return
        enter_relay(flow, turn, report, addition=True)


STEPS: tuple[Step, ...] = (Relay(), RelayCode(), RelayPin())
