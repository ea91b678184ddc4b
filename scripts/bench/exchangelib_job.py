#!/usr/bin/env python3
"""Reference job for the benchmark: what a competent Python user would write with exchangelib
to copy every mail folder of many mailboxes into JSONL, one document per email, in the same
`NewEmail` shape as exchange-sync.

- a ThreadPoolExecutor over mailboxes (one exchangelib Account per mailbox, delegate access,
  NTLM, no autodiscover), sharing one connection pool of --workers connections;
- folders: every folder under "Top of Information Store" whose own class and every ancestor's
  is mail (IPF.Note, IPF.Note.*, or none), that is not a search folder and not hidden
  (PR_ATTR_HIDDEN, registered as an extended property): the same rule as exchange-sync;
- per folder: FindItem since a timestamp (`filter(datetime_received__gte=...)`, ids only,
  oldest first, pages of --page-size), then GetItem with MIME in chunks of --chunk-size
  (`account.fetch(ids, only_fields=[...], chunk_size=...)`), which is Microsoft's advice for
  MIME exports (10 per request);
- output: DIR/<mailbox>.jsonl, one JSON document per line (id, mailbox, timestamp,
  mime_content, metadata{folder, received_at, conversation_id, conversation_topic,
  has_attachments, is_read, importance, sensitivity, categories, size}, attachments).

No politeness sleep between requests (poll_message_sleep 0, like exchange-sync in the bench).
Prints one line `exchangelib-job emails=N mailboxes=M errors=E seconds=S` at the end; exits 1 if
any mailbox failed.
"""

import argparse
import codecs
import hashlib
import json
import os
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from email.parser import BytesHeaderParser

from exchangelib import (
    DELEGATE,
    NTLM,
    UTC,
    Account,
    Build,
    Configuration,
    Credentials,
    EWSDateTime,
    ExtendedProperty,
    Folder,
    Version,
)
from exchangelib.util import TNS

# exchangelib turns every folder element into a Folder subclass chosen by class and name, so a
# search folder (its items are copies of mail stored elsewhere) looks like a mail folder.
# Remember which ids came as t:SearchFolder.
SEARCH_FOLDER_IDS = set()
_from_xml_with_root = Folder.from_xml_with_root.__func__


def _remember_search_folders(cls, elem, root):
    folder = _from_xml_with_root(cls, elem, root)
    if elem.tag == f"{{{TNS}}}SearchFolder":
        SEARCH_FOLDER_IDS.add(folder.id)
    return folder


Folder.from_xml_with_root = classmethod(_remember_search_folders)


class IsHidden(ExtendedProperty):
    """PR_ATTR_HIDDEN: Outlook hides these folders, and so do we."""

    property_tag = 0x10F4
    property_type = "Boolean"


Folder.register("is_hidden", IsHidden)

FIELDS = [
    "mime_content",
    "datetime_received",
    "datetime_sent",
    "size",
    "has_attachments",
    "attachments",
    "importance",
    "sensitivity",
    "categories",
    "conversation_id",
    "conversation_topic",
    "message_id",
    "is_read",
]


def _latin1_fallback(err):
    # A byte that is not part of valid UTF-8 becomes the character of the same Latin-1 code
    # point (never U+FFFD), as exchange-sync does.
    return err.object[err.start : err.end].decode("latin-1"), err.end


codecs.register_error("latin1-fallback", _latin1_fallback)


def rfc3339(dt):
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if dt else None


def email_id(mailbox, item, mime):
    if item.message_id and item.message_id.strip():
        return item.message_id.strip()
    try:
        header = BytesHeaderParser().parsebytes(mime or b"").get("Message-ID")
    except Exception:  # noqa: BLE001 - a broken header just means no id from it
        header = None
    if header and header.strip():
        value = header.strip()
        return value if value.startswith("<") else f"<{value}>"
    digest = hashlib.sha256(mailbox.lower().encode() + b"\0" + item.id.encode()).digest()
    return "exchange-sync:" + digest[:16].hex()


def document(mailbox, path, item):
    mime = item.mime_content or b""
    received = item.datetime_received
    metadata = {"folder": path, "received_at": rfc3339(received)}
    optional = {
        "conversation_id": item.conversation_id.id if item.conversation_id else None,
        "conversation_topic": item.conversation_topic,
        "has_attachments": item.has_attachments,
        "is_read": item.is_read,
        "importance": item.importance,
        "sensitivity": item.sensitivity,
        "categories": item.categories or None,
        "size": item.size,
    }
    metadata.update({k: v for k, v in optional.items() if v is not None})
    doc = {
        "id": email_id(mailbox, item, mime),
        "mailbox": mailbox,
        "timestamp": rfc3339(item.datetime_sent or received),
        "mime_content": mime.decode("utf-8", "latin1-fallback"),
        "metadata": metadata,
    }
    attachments = [
        {
            "name": a.name or "",
            "size": a.size or 0,
            "content_type": a.content_type
            or ("message/rfc822" if a.__class__.__name__ == "ItemAttachment" else "application/octet-stream"),
            "inline": bool(a.is_inline),
        }
        for a in (item.attachments or [])
    ]
    if attachments:
        doc["attachments"] = attachments
    return doc


def is_mail_folder(folder):
    cls = folder.folder_class
    return (
        folder.id not in SEARCH_FOLDER_IDS
        and not getattr(folder, "is_hidden", False)
        and (not cls or cls == "IPF.Note" or cls.startswith("IPF.Note."))
    )


def mail_folders(account):
    """(folder, display-name path) of every folder to copy."""
    top = account.msg_folder_root
    out = []
    for folder in top.walk():
        path, node, ok = [], folder, True
        while node is not None and node.id != top.id:
            if not is_mail_folder(node):
                ok = False
                break
            path.insert(0, node.name)
            node = node.parent
        if ok and node is not None:
            out.append((folder, path))
    return out


def sync_mailbox(address, config, since, out_dir, page_size, chunk_size):
    account = Account(
        primary_smtp_address=address, config=config, autodiscover=False, access_type=DELEGATE
    )
    count = 0
    with open(os.path.join(out_dir, f"{address}.jsonl"), "w", encoding="utf-8") as out:
        for folder, path in mail_folders(account):
            qs = folder.filter(datetime_received__gte=since).order_by("datetime_received")
            qs.page_size = page_size
            ids = list(qs.values_list("id", "changekey"))
            if not ids:
                continue
            for item in account.fetch(ids, folder=folder, only_fields=FIELDS, chunk_size=chunk_size):
                if isinstance(item, Exception):
                    print(f"{address} {path}: {item!r}", file=sys.stderr)
                    continue
                out.write(json.dumps(document(address, path, item), ensure_ascii=False))
                out.write("\n")
                count += 1
    return count


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--user", default="BENCH\\bench")
    p.add_argument("--password", default="bench-pass")
    p.add_argument("--mailboxes-file", required=True, help="one address per line")
    p.add_argument("--out", required=True)
    p.add_argument("--since", default="2000-01-01T00:00:00")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=10)
    p.add_argument("--page-size", type=int, default=100)
    args = p.parse_args()

    with open(args.mailboxes_file) as f:
        mailboxes = [line.strip() for line in f if line.strip()]
    os.makedirs(args.out, exist_ok=True)
    config = Configuration(
        service_endpoint=args.url,
        credentials=Credentials(args.user, args.password),
        auth_type=NTLM,
        version=Version(build=Build(15, 1, 2507, 6)),
        max_connections=args.workers,
    )
    since = EWSDateTime.from_string(args.since + "Z") if "T" in args.since else None
    since = since.astimezone(UTC)
    started = time.monotonic()
    total, errors = 0, 0
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = {
            pool.submit(
                sync_mailbox, a, config, since, args.out, args.page_size, args.chunk_size
            ): a
            for a in mailboxes
        }
        for fut in as_completed(futures):
            try:
                total += fut.result()
            except Exception:  # noqa: BLE001 - report and go on with the other mailboxes
                errors += 1
                print(f"mailbox {futures[fut]} failed:", file=sys.stderr)
                traceback.print_exc()
    print(
        f"exchangelib-job emails={total} mailboxes={len(mailboxes)} errors={errors} "
        f"seconds={time.monotonic() - started:.2f}"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
