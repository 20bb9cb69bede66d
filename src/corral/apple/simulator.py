"""A protocol-level Apple device: what an iPhone, iPad or Mac does to enroll into an MDM server, at the level
of its messages. It fetches the enrollment profile and verifies its signature against the CA it was told to
trust, makes an RSA key and enrolls it over SCEP with the profile's challenge, exactly as the operating
system's MDM client does. Used by the tests and by ``corral simulate --platform ios|macos``.

It is deliberately independent of the server's code: it shares only the CMS helpers (kit/cms.py) and the
plist parser, so that what it checks of the server's answers is checked the way a device would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import plistlib
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs7
from cryptography.x509.oid import AttributeOID, ExtendedKeyUsageOID, NameOID

from corral.apple import plist
from corral.kit import cms

log = logging.getLogger("corral.simulator.apple")

# SCEP attributes (RFC 8894 §3.2.1): the simulator spells them out itself, as a device's SCEP client does.
_MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
_PKI_STATUS = "2.16.840.1.113733.1.9.3"
_FAIL_INFO = "2.16.840.1.113733.1.9.4"
_SENDER_NONCE = "2.16.840.1.113733.1.9.5"
_RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
_TRANSACTION_ID = "2.16.840.1.113733.1.9.7"

#: kind → (ProductName, Model, ModelName, OSVersion, BuildVersion)
MODELS = {
    "iphone": ("iPhone16,1", "MTLX3", "iPhone", "18.1", "22B83"),
    "ipad": ("iPad14,1", "MK7M3", "iPad", "18.1", "22B83"),
    "mac": ("Mac15,6", "Mac15,6", "MacBook Pro", "15.1", "24B83"),
}


class SimulatorError(RuntimeError):
    """The server answered something a real device would refuse (or refused the device)."""


@dataclass
class Identity:
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey
    chain: list[x509.Certificate]


@dataclass
class AppleDevice:
    """One simulated device, deterministic from ``seed``."""

    kind: str = "iphone"
    seed: str = "corral"
    identity: Identity | None = None
    profile: dict[str, Any] = field(default_factory=dict)
    udid: str = ""
    serial_number: str = ""

    def __post_init__(self) -> None:
        if self.kind not in MODELS:
            raise ValueError(f"kind must be one of {', '.join(MODELS)}")
        digest = hashlib.sha256(f"{self.kind}:{self.seed}".encode()).hexdigest()
        rng = random.Random(digest)
        # iPhones and iPads have a 40-hex UDID (older) or 8-16 form; Macs a UUID: the fixtures have both.
        self.udid = digest[:40] if self.kind != "mac" else str(uuid.UUID(digest[:32])).upper()
        self.serial_number = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(10))

    # ------------------------------------------------------------------------------------ enrollment
    @property
    def product(self) -> tuple[str, str, str, str, str]:
        return MODELS[self.kind]

    async def fetch_profile(
        self, client: httpx.AsyncClient, url: str, trust: x509.Certificate | str | None
    ) -> dict[str, Any]:
        """Download the enrollment profile and check it as a device does before offering to install it: a CMS
        signature that verifies, by a certificate that ``trust`` issued, around a configuration profile
        holding a SCEP and an MDM payload. ``trust``: the CA certificate, or the SHA-256 fingerprint (hex) of
        one the profile carries, or None to take the CA the profile carries (what a user does who installs
        a profile marked "not verified")."""
        response = await client.get(url)
        if response.status_code != 200:
            raise SimulatorError(
                f"the enrollment profile was refused: {response.status_code} {response.text}"
            )
        if response.headers.get("content-type", "").split(";")[0] != "application/x-apple-aspen-config":
            raise SimulatorError(
                f"the enrollment profile has the wrong type {response.headers.get('content-type')}"
            )
        try:
            signed = cms.verify_signed_data(response.content)
        except cms.CmsError as exc:
            raise SimulatorError(f"the enrollment profile's signature does not verify: {exc}") from exc
        if not isinstance(trust, x509.Certificate):
            carried = [c for c in signed.certificates if c is not signed.signer]
            if isinstance(trust, str):
                wanted = trust.lower().removeprefix("sha256:").replace(":", "")
                carried = [c for c in carried if c.fingerprint(hashes.SHA256()).hex() == wanted]
            if not carried:
                raise SimulatorError("the enrollment profile carries no CA certificate to trust")
            trust = carried[0]
        try:
            signed.signer.verify_directly_issued_by(trust)
        except (ValueError, TypeError) as exc:
            raise SimulatorError(
                "the enrollment profile is not signed by a certificate the trusted CA issued"
            ) from exc
        profile = plist.parse(signed.content, max_bytes=1 << 20)
        kinds = {p.get("PayloadType"): p for p in profile.get("PayloadContent", [])}
        if profile.get("PayloadType") != "Configuration" or not {
            "com.apple.security.scep",
            "com.apple.mdm",
        } <= set(kinds):
            raise SimulatorError("the enrollment profile lacks its SCEP or MDM payload")
        mdm = kinds["com.apple.mdm"]
        if mdm.get("IdentityCertificateUUID") != kinds["com.apple.security.scep"]["PayloadUUID"]:
            raise SimulatorError("the MDM payload does not name the SCEP payload as its identity")
        if not mdm.get("SignMessage") or not str(mdm.get("Topic", "")).startswith("com.apple.mgmt."):
            raise SimulatorError("the MDM payload must sign messages and name a com.apple.mgmt. topic")
        self.profile = profile
        return profile

    def _payload(self, kind: str) -> dict[str, Any]:
        for payload in self.profile.get("PayloadContent", []):
            if payload.get("PayloadType") == kind:
                found: dict[str, Any] = payload
                return found
        raise SimulatorError(f"no {kind} payload: fetch the profile first")

    async def scep_enroll(self, client: httpx.AsyncClient, *, url: str | None = None) -> Identity:
        """SCEP as the device's client does it: caps, CA certificates, then a PKCSReq with the profile's
        challenge; the answer's signature and status checked, the certificate decrypted."""
        scep = self._payload("com.apple.security.scep")["PayloadContent"]
        url = url or scep["URL"]
        caps = await client.get(url, params={"operation": "GetCACaps"})
        if caps.status_code != 200 or "POSTPKIOperation" not in caps.text:
            raise SimulatorError(f"GetCACaps: {caps.status_code} {caps.text[:200]}")
        ca_response = await client.get(url, params={"operation": "GetCACert"})
        if ca_response.status_code != 200:
            raise SimulatorError(f"GetCACert: {ca_response.status_code}")
        certificates = cms.certificates_of(ca_response.content)
        ra = next((c for c in certificates if _key_encipherment(c)), None)
        if ra is None:
            raise SimulatorError("GetCACert names no certificate that can receive an encrypted request")
        issuers = [c for c in certificates if c is not ra]
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(scep.get("Keysize", 2048)))
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{self.kind}-{self.udid[:12]}")])
            )
            .add_attribute(AttributeOID.CHALLENGE_PASSWORD, str(scep["Challenge"]).encode())
            .sign(key, hashes.SHA256())
        )
        now = datetime.now(UTC)
        self_signed = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(csr.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        envelope = (
            pkcs7.PKCS7EnvelopeBuilder()
            .set_data(csr.public_bytes(Encoding.DER))
            .add_recipient(ra)
            .encrypt(Encoding.DER, [pkcs7.PKCS7Options.Binary])
        )
        nonce = os.urandom(16)
        transaction = hashlib.sha256(
            key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        ).hexdigest()
        message = cms.sign(
            envelope,
            self_signed,
            key,
            attributes=[
                (_MESSAGE_TYPE, core.PrintableString("19")),
                (_TRANSACTION_ID, core.PrintableString(transaction)),
                (_SENDER_NONCE, core.OctetString(nonce)),
            ],
        )
        response = await client.post(
            url,
            params={"operation": "PKIOperation"},
            content=message,
            headers={"Content-Type": "application/x-pki-message"},
        )
        if response.status_code != 200:
            raise SimulatorError(f"PKIOperation: {response.status_code} {response.text[:300]}")
        try:
            reply = _verify_reply(response.content)
        except cms.CmsError as exc:
            raise SimulatorError(f"the SCEP answer does not verify: {exc}") from exc
        if reply.signer.fingerprint(hashes.SHA256()) != ra.fingerprint(hashes.SHA256()):
            raise SimulatorError("the SCEP answer is not signed by the RA")
        if _attr(reply, _TRANSACTION_ID, core.PrintableString) != transaction:
            raise SimulatorError("the SCEP answer is for another transaction")
        if _attr(reply, _RECIPIENT_NONCE, core.OctetString) != nonce:
            raise SimulatorError("the SCEP answer does not echo the request's nonce")
        status = _attr(reply, _PKI_STATUS, core.PrintableString)
        if status != "0":
            raise ScepRefused(str(_attr(reply, _FAIL_INFO, core.PrintableString)))
        inner = pkcs7.pkcs7_decrypt_der(reply.content, self_signed, key, [])
        issued = cms.certificates_of(inner)
        spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        mine = [
            c
            for c in issued
            if c.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == spki
        ]
        if not mine:
            raise SimulatorError("the SCEP answer carries no certificate for the device's key")
        certificate = mine[0]
        if not any(_issued_by(certificate, issuer) for issuer in issuers):
            raise SimulatorError("the issued certificate is not from the CA GetCACert named")
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            raise SimulatorError("the issued certificate is not for client authentication")
        self.identity = Identity(certificate, key, issuers)
        return self.identity

    # ------------------------------------------------------------------------------------ check-in
    push_token: bytes = b""
    push_magic: str = ""
    unlock_token: bytes = b""

    def sign(self, body: bytes) -> str:
        """The Mdm-Signature of a body: a detached CMS signature by the SCEP identity, base64 (as the MDM
        client sends it with SignMessage)."""
        if self.identity is None:
            raise SimulatorError("no identity: enroll over SCEP first")
        der = cms.sign(body, self.identity.certificate, self.identity.key, detached=True)
        return base64.b64encode(der).decode()

    @property
    def topic(self) -> str:
        return str(self._payload("com.apple.mdm")["Topic"])

    def _url(self, key: str) -> str:
        return str(self._payload("com.apple.mdm")[key])

    async def send(
        self, client: httpx.AsyncClient, message: dict[str, Any], *, url: str | None = None
    ) -> httpx.Response:
        """A signed check-in message (the CheckInURL), as the device sends it."""
        body = plistlib.dumps(message, fmt=plistlib.FMT_XML)
        return await self.send_raw(client, body, url=url or self._url("CheckInURL"))

    async def send_raw(
        self, client: httpx.AsyncClient, body: bytes, *, url: str, signature: str | None = None
    ) -> httpx.Response:
        """Send ``body`` signed; ``signature`` replaces the device's own (``""``: no Mdm-Signature at all)."""
        headers = {"Content-Type": "application/x-apple-aspen-mdm-checkin"}
        if signature != "":
            headers["Mdm-Signature"] = signature if signature is not None else self.sign(body)
        return await client.put(url, content=body, headers=headers)

    def authenticate_message(self) -> dict[str, Any]:
        product, model, model_name, os_version, build = self.product
        message: dict[str, Any] = {
            "MessageType": "Authenticate",
            "Topic": self.topic,
            "UDID": self.udid,
            "SerialNumber": self.serial_number,
            "ProductName": product,
            "Model": model,
            "ModelName": model_name,
            "OSVersion": os_version,
            "BuildVersion": build,
            "DeviceName": f"{model_name} {self.serial_number[-4:]}",
        }
        return message

    def token_update_message(self) -> dict[str, Any]:
        digest = hashlib.sha256(f"push:{self.udid}".encode()).digest()
        self.push_token = self.push_token or digest  # 32 bytes, as APNs tokens are
        self.push_magic = self.push_magic or str(uuid.UUID(bytes=digest[:16])).upper()
        message: dict[str, Any] = {
            "MessageType": "TokenUpdate",
            "Topic": self.topic,
            "UDID": self.udid,
            "Token": self.push_token,
            "PushMagic": self.push_magic,
            "AwaitingConfiguration": False,
        }
        if self.kind != "mac":
            self.unlock_token = (
                self.unlock_token or hashlib.sha512(f"unlock:{self.udid}".encode()).digest() * 36
            )
            message["UnlockToken"] = self.unlock_token
        return message

    async def check_in(self, client: httpx.AsyncClient) -> None:
        """Authenticate, then TokenUpdate: what the device does once its profile is installed."""
        for message in (self.authenticate_message(), self.token_update_message()):
            response = await self.send(client, message)
            if response.status_code != 200:
                raise SimulatorError(
                    f"{message['MessageType']}: {response.status_code} {response.text[:300]}"
                )

    async def check_out(self, client: httpx.AsyncClient) -> httpx.Response:
        return await self.send(client, {"MessageType": "CheckOut", "Topic": self.topic, "UDID": self.udid})

    async def enroll(self, client: httpx.AsyncClient, url: str, trust: x509.Certificate | str | None) -> None:
        """The whole enrollment: profile, SCEP, Authenticate, TokenUpdate."""
        await self.fetch_profile(client, url, trust)
        await self.scep_enroll(client)
        await self.check_in(client)

    # ------------------------------------------------------------------------------------ commands
    supervised: bool = False
    lost_mode: bool = False
    passcode_set: bool = True
    #: Answer NotNow to this many commands first (a locked device with data protection does).
    not_now: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    erased: bool = False
    checked_out: bool = False
    #: Answer InstallProfile with an error (a payload the device cannot take, say).
    refuse_profiles: bool = False
    #: Configuration profiles installed by the server: identifier → profile.
    installed_profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    _session: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def connect(self, client: httpx.AsyncClient, report: dict[str, Any]) -> httpx.Response:
        """One request to the ServerURL: a status report (or Idle)."""
        body = plistlib.dumps({"UDID": self.udid, **report}, fmt=plistlib.FMT_XML)
        return await self.send_raw(client, body, url=self._url("ServerURL"))

    async def connect_loop(self, client: httpx.AsyncClient, *, limit: int = 100) -> list[str]:
        """What the device does when pushed: Idle, then answer each command until the server has no more.
        Returns the RequestTypes it received. One session at a time, as a device does (a push during a
        session is taken after it)."""
        async with self._session:
            return await self._connect_loop(client, limit)

    async def _connect_loop(self, client: httpx.AsyncClient, limit: int) -> list[str]:
        report: dict[str, Any] = {"Status": "Idle"}
        handled: list[str] = []
        for _ in range(limit):
            response = await self.connect(client, report)
            if response.status_code != 200:
                raise SimulatorError(f"connect: {response.status_code} {response.text[:300]}")
            if not response.content:
                return handled
            command = plist.parse(response.content, max_bytes=4 << 20)
            self.received.append(command)
            request_type = str(command["Command"]["RequestType"])
            handled.append(request_type)
            report = self.answer(command)
            if self.erased:
                return handled
            if self.checked_out:
                await self.connect(client, report)  # the acknowledgement, then the CheckOut
                await self.check_out(client)
                return handled
        raise SimulatorError("the server kept sending commands")

    def answer(self, command: dict[str, Any]) -> dict[str, Any]:
        """A realistic report on ``command``, shaped like the captured ones (tests/fixtures/apple-mdm)."""
        uuid_ = command["CommandUUID"]
        body = command["Command"]
        request_type = body["RequestType"]
        if self.not_now > 0:
            self.not_now -= 1
            return {"Status": "NotNow", "CommandUUID": uuid_}
        ack: dict[str, Any] = {"Status": "Acknowledged", "CommandUUID": uuid_}
        product, model, model_name, os_version, build = self.product
        mac = self.kind == "mac"
        if request_type == "DeviceInformation":
            values = {
                "DeviceName": f"{model_name} {self.serial_number[-4:]}",
                "OSVersion": os_version,
                "BuildVersion": build,
                "ModelName": model_name,
                "Model": model,
                "ProductName": product,
                "SerialNumber": self.serial_number,
                "UDID": self.udid,
                "DeviceCapacity": 256.0 if not mac else 994.66,
                "AvailableDeviceCapacity": 171.25 if not mac else 512.5,
                "IsSupervised": self.supervised,
                "IsMDMLostModeEnabled": self.lost_mode,
                "IsActivationLockEnabled": False,
                "IsAppleSilicon": True,
                "SystemIntegrityProtectionEnabled": True,
                "HostName": f"{model_name.replace(' ', '-').lower()}-{self.serial_number[-4:].lower()}",
                "WiFiMAC": "a4:83:e7:" + ":".join(self.udid[i : i + 2] for i in (0, 2, 4)).lower(),
                "BatteryLevel": 0.87,
            }
            queries = body.get("Queries") or list(values)
            return {**ack, "QueryResponses": {k: values[k] for k in queries if k in values}}
        if request_type == "SecurityInfo":
            if mac:
                info: dict[str, Any] = {
                    "FDE_Enabled": True,
                    "FirewallSettings": {
                        "FirewallEnabled": True,
                        "BlockAllIncoming": False,
                        "StealthMode": False,
                    },
                    "SecureBoot": {"SecureBootLevel": "full"},
                    "SystemIntegrityProtectionEnabled": True,
                }
            else:
                info = {
                    "HardwareEncryptionCaps": 3,
                    "PasscodePresent": self.passcode_set,
                    "PasscodeCompliant": True,
                    "PasscodeCompliantWithProfiles": True,
                    "PasscodeLockGracePeriodEnforced": 0,
                }
            return {**ack, "SecurityInfo": info}
        if request_type == "InstalledApplicationList":
            apps = [
                {
                    "Name": "Safari",
                    "Identifier": "com.apple.mobilesafari",
                    "ShortVersion": os_version,
                    "Version": build,
                },
                {
                    "Name": "Slack",
                    "Identifier": "com.tinyspeck.chatlyio",
                    "ShortVersion": "24.11.10",
                    "Version": "2411",
                },
                {
                    "Name": "Microsoft Outlook",
                    "Identifier": "com.microsoft.Office.Outlook",
                    "ShortVersion": "4.2446.0",
                },
            ]
            return {**ack, "InstalledApplicationList": apps}
        if request_type == "ProfileList":
            return {
                **ack,
                "ProfileList": [
                    {
                        "PayloadIdentifier": profile.get("PayloadIdentifier", ""),
                        "PayloadDisplayName": profile.get("PayloadDisplayName", ""),
                        "PayloadOrganization": profile.get("PayloadOrganization", ""),
                        "HasRemovalPasscode": False,
                        "IsEncrypted": False,
                        "IsManaged": True,
                        "PayloadContent": [
                            {"PayloadType": p["PayloadType"], "PayloadIdentifier": p["PayloadIdentifier"]}
                            for p in profile.get("PayloadContent", [])
                        ],
                    }
                    for profile in (self.profile, *self.installed_profiles.values())
                ],
            }
        if request_type == "CertificateList":
            assert self.identity is not None
            der = self.identity.certificate.public_bytes(Encoding.DER)
            return {
                **ack,
                "CertificateList": [{"CommonName": "Corral device", "Data": der, "IsIdentity": True}],
            }
        if request_type == "DeviceLock":
            return {**ack, "MessageResult": "Locked"} if body.get("Message") else ack
        if request_type == "EraseDevice":
            self.erased = True
            return ack
        if request_type == "InstallProfile":
            if self.refuse_profiles:
                return _error(uuid_, 4001, "MCInstallationErrorDomain", "The profile could not be installed.")
            try:
                installed = plist.parse(cms.verify_signed_data(body["Payload"]).content, max_bytes=1 << 20)
            except (cms.CmsError, plist.PlistError, KeyError):
                return _error(uuid_, 1000, "MCProfileErrorDomain", "The profile is not valid.")
            self.installed_profiles[str(installed.get("PayloadIdentifier"))] = installed
            return ack
        if request_type == "RemoveProfile":
            if body.get("Identifier") == self.profile.get("PayloadIdentifier"):
                self.checked_out = True
            self.installed_profiles.pop(str(body.get("Identifier")), None)
            return ack
        if request_type == "ClearPasscode":
            if body.get("UnlockToken") != self.unlock_token or not self.unlock_token:
                return _error(uuid_, 12078, "MCMDMErrorDomain", "The unlock token is invalid.")
            self.passcode_set = False
            return ack
        if request_type == "EnableLostMode":
            self.lost_mode = True
            return ack
        if request_type == "DisableLostMode":
            self.lost_mode = False
            return ack
        if request_type == "DeviceLocation":
            if not self.lost_mode:
                return _error(uuid_, 12067, "MCMDMErrorDomain", "The device is not in lost mode.")
            return {**ack, "Latitude": 48.8584, "Longitude": 2.2945, "HorizontalAccuracy": 12.0}
        if request_type == "Settings":
            items = body.get("Settings") or []
            return {**ack, "Settings": [{"Item": i.get("Item"), "Status": "Acknowledged"} for i in items]}
        if request_type in ("RestartDevice", "ShutDownDevice"):
            return ack
        return _error(uuid_, 12021, "MCMDMErrorDomain", f"“{request_type}” is not a valid request type.")


class ScepRefused(SimulatorError):
    """The SCEP server answered FAILURE; the message is its failInfo."""

    def __init__(self, fail_info: str) -> None:
        super().__init__(f"SCEP refused the request (failInfo {fail_info})")
        self.fail_info = fail_info


def _verify_reply(der: bytes) -> cms.Signed:
    """A CertRep: SUCCESS carries content, FAILURE none (its digest is over no bytes)."""
    try:
        return cms.verify_signed_data(der)
    except cms.CmsError as exc:
        if "no content" not in str(exc):
            raise
        return cms.verify_signed_data(der, detached=b"")


def _key_encipherment(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment)
    except x509.ExtensionNotFound:
        return False


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError):
        return False
    return True


def _attr(signed: cms.Signed, oid: str, spec: type[core.Asn1Value]) -> Any:
    value = signed.attributes.get(oid)
    if value is None:
        return None
    return (value if isinstance(value, spec) else value.parse(spec)).native


def _error(command_uuid: str, code: int, domain: str, text: str) -> dict[str, Any]:
    return {
        "Status": "Error",
        "CommandUUID": command_uuid,
        "ErrorChain": [
            {
                "ErrorCode": code,
                "ErrorDomain": domain,
                "LocalizedDescription": text,
                "USEnglishDescription": text,
            }
        ],
    }


# ------------------------------------------------------------------------------------ a simulated fleet
KINDS = {"ios": "iphone", "ipados": "ipad", "macos": "mac"}


async def simulate(
    url: str,
    token: str | None,
    devices: int,
    platform: str,
    *,
    ca_fingerprint: str | None = None,
    duration: float | None = None,
    interval: float = 60.0,
    seed: str = "corral-apple",
    progress: Callable[[Any], None] | None = None,
    stop: asyncio.Event | None = None,
) -> Any:
    """``corral simulate --platform ios|ipados|macos``: ``devices`` simulated Apple devices enroll through the
    enrollment profile URL (``url`` is Corral's base URL with ``token``, or the profile URL itself), then
    connect every ``interval`` seconds (there is no APNs here) and answer their commands."""
    from corral.simulator import Stats

    if token:
        url = f"{url.rstrip('/')}/apple/v1/enroll?token={token}"
    stats = Stats(devices)
    stop = stop or asyncio.Event()
    fleet = [AppleDevice(KINDS[platform], seed=f"{seed}-{index}") for index in range(devices)]
    async with httpx.AsyncClient(timeout=30) as client:

        async def run(device: AppleDevice) -> None:
            try:
                await device.enroll(client, url, ca_fingerprint)
            except (SimulatorError, httpx.HTTPError) as exc:
                stats.failed += 1
                log.warning("%s %s: enrollment failed: %s", device.kind, device.serial_number, exc)
                return
            stats.enrolled += 1
            while not stop.is_set() and not device.erased and not device.checked_out:
                try:
                    handled = await device.connect_loop(client)
                    stats.checkins += 1
                    stats.commands += len(handled)
                except (SimulatorError, httpx.HTTPError) as exc:
                    stats.failed += 1
                    log.warning("%s %s: %s", device.kind, device.serial_number, exc)
                if device.erased or device.checked_out:
                    stats.ended += 1
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval * random.uniform(0.8, 1.2))

        async def report() -> None:
            while not stop.is_set():
                if progress:
                    progress(stats)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1)

        if duration is not None:
            asyncio.get_running_loop().call_later(duration, stop.set)
        reporter = asyncio.create_task(report())
        await asyncio.gather(*(run(device) for device in fleet))
        stop.set()
        await reporter
    return stats
