"""The enrollment profile (``.mobileconfig``) an Apple device installs to enroll: trust for Corral's CA when
Corral serves TLS with it, a SCEP payload that makes the device's identity, and the MDM payload naming the
check-in and command URLs, the push topic and that identity. Signed (CMS, attached) by Corral's profile
signer, so the device can tell where it came from. Payload keys follow Apple's schema
(apple/device-management ``mdm/profiles/com.apple.mdm.yaml`` and ``com.apple.security.scep.yaml``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from corral.apple import plist
from corral.kit import cms

CONTENT_TYPE = "application/x-apple-aspen-config"
FILENAME = "corral-enroll.mobileconfig"
#: Everything a device may do for the server (AccessRights bits 1 to 4096, all set): what Corral's commands
#: and inventory need (profiles, device information, network, security, lock and wipe, apps, settings).
ACCESS_RIGHTS = 8191
#: Apple's default SCEP key is 1024-bit RSA, which Corral's SCEP server refuses.
KEY_SIZE = 2048
#: The identity's key usage: signing (the check-in signature) and encryption (4 + 1).
KEY_USAGE = 5


@dataclass(frozen=True)
class EnrollmentProfile:
    base_url: str
    topic: str
    challenge: str
    organization: str
    #: The top-level PayloadIdentifier, the same for every device of this Corral: retire removes the
    #: profile by it (RemoveProfile).
    identifier: str
    #: The CA to install as trusted, when Corral serves TLS with its own CA (None: a public certificate).
    trust: x509.Certificate | None = None


def identifier_for(base_url: str) -> str:
    return f"com.corral.enroll.{uuid.uuid5(uuid.NAMESPACE_URL, base_url)}"


def _payload(kind: str, identifier: str, name: str, **keys: Any) -> dict[str, Any]:
    return {
        "PayloadType": kind,
        "PayloadIdentifier": identifier,
        "PayloadUUID": str(uuid.uuid4()).upper(),
        "PayloadVersion": 1,
        "PayloadDisplayName": name,
        **keys,
    }


def build(profile: EnrollmentProfile) -> dict[str, Any]:
    """The profile's property list."""
    scep = _payload(
        "com.apple.security.scep",
        f"{profile.identifier}.scep",
        "Device identity",
        PayloadContent={
            "URL": f"{profile.base_url}/apple/v1/scep",
            "Name": "Corral",
            "Subject": [[["O", "Corral"]], [["CN", "Corral device"]]],
            "Challenge": profile.challenge,
            "Keysize": KEY_SIZE,
            "Key Type": "RSA",
            "Key Usage": KEY_USAGE,
            "Retries": 3,
            "RetryDelay": 10,
            "KeyIsExtractable": False,
        },
    )
    mdm = _payload(
        "com.apple.mdm",
        f"{profile.identifier}.mdm",
        "Device management",
        IdentityCertificateUUID=scep["PayloadUUID"],
        Topic=profile.topic,
        ServerURL=f"{profile.base_url}/apple/v1/connect",
        CheckInURL=f"{profile.base_url}/apple/v1/checkin",
        SignMessage=True,
        CheckOutWhenRemoved=True,
        AccessRights=ACCESS_RIGHTS,
        UseDevelopmentAPNS=False,
    )
    content: list[dict[str, Any]] = []
    if profile.trust is not None:
        content.append(
            _payload(
                "com.apple.security.root",
                f"{profile.identifier}.trust",
                "Corral certificate authority",
                PayloadContent=profile.trust.public_bytes(Encoding.DER),
                PayloadCertificateFileName="corral-ca.cer",
            )
        )
    content += [scep, mdm]
    return {
        "PayloadType": "Configuration",
        "PayloadIdentifier": profile.identifier,
        "PayloadUUID": str(uuid.uuid4()).upper(),
        "PayloadVersion": 1,
        "PayloadDisplayName": f"{profile.organization} device management",
        "PayloadDescription": "Lets your organisation manage this device with Corral.",
        "PayloadOrganization": profile.organization,
        "PayloadScope": "System",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": content,
    }


def signed(
    profile: EnrollmentProfile, signer: x509.Certificate, key: Any, chain: list[x509.Certificate]
) -> bytes:
    """The profile as a DER CMS SignedData (attached), the signer's chain embedded."""
    return cms.sign(plist.dump(build(profile)), signer, key, certificates=chain)
