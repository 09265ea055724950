"""Drive django-pyas2 from the tests: configure, list messages, send (runs in its own venv).

partner.py configure JSON   set up organization CTAIFEP and partner MYCOMPANY
partner.py messages         print every message (and its MDN) as JSON
partner.py send PATH        send PATH to MYCOMPANY with django-pyas2's own command
partner.py async-mdns       post the asynchronous MDNs waiting (django-pyas2's own command)
"""

import json
import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
django.setup()

from django.core.management import call_command  # noqa: E402
from pyas2.models import (  # noqa: E402
    Message,
    Organization,
    Partner,
    PrivateKey,
    PublicCertificate,
)


def configure(spec: dict) -> None:
    call_command("migrate", verbosity=0)
    with open(spec["key_p12"], "rb") as key_file:
        key = PrivateKey.objects.create(
            name="ctaifep", key=key_file.read(), key_pass=spec["key_pass"]
        )
    with open(spec["partner_certificate"], "rb") as cert_file:
        cert = PublicCertificate.objects.create(
            name="mycompany", certificate=cert_file.read(), verify_cert=False
        )
    Organization.objects.update_or_create(
        as2_name="CTAIFEP",
        defaults={"name": "AIFE", "encryption_key": key, "signature_key": key},
    )
    Partner.objects.update_or_create(
        as2_name="MYCOMPANY",
        defaults={
            "name": "raccord",
            "target_url": spec.get("target_url", "http://127.0.0.1:1/"),
            "encryption": spec.get("encryption"),
            "encryption_cert": cert,
            "signature": spec.get("signature"),
            "signature_cert": cert,
            "compress": spec.get("compress", False),
            "mdn": spec.get("mdn_mode") is not None,
            "mdn_mode": spec.get("mdn_mode"),
            "mdn_sign": spec.get("mdn_sign"),
            "content_type": "application/octet-stream",
        },
    )


def messages() -> None:
    found = []
    for msg in Message.objects.order_by("timestamp"):
        payload = None
        if msg.payload:
            with msg.payload.open("rb") as stored:
                payload = stored.read().decode("latin-1")
        mdn = getattr(msg, "mdn", None)
        found.append(
            {
                "message_id": msg.message_id,
                "direction": msg.direction,
                "status": msg.status,
                "detailed_status": msg.detailed_status,
                "signed": msg.signed,
                "encrypted": msg.encrypted,
                "compressed": msg.compressed,
                "payload": payload,
                "mdn_status": mdn.status if mdn else None,
            }
        )
    print(json.dumps(found))


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "configure":
        configure(json.loads(sys.argv[2]))
    elif command == "messages":
        messages()
    elif command == "async-mdns":
        call_command("manageas2server", async_mdns=True)
    elif command == "send":
        call_command("sendas2message", "CTAIFEP", "MYCOMPANY", sys.argv[2])
    else:
        sys.exit(f"unknown command {command}")
