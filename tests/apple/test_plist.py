"""The Apple MDM property-list parser: real device messages parse; every hostile or malformed body is refused
with PlistError (never another exception, never a fetch, never a message echoing the input); results turn
into JSON for JSONB. Pure unit tests: no database."""

from __future__ import annotations

import base64
import json
import plistlib
import socket
import struct
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.apple.plist import MAX_NODES, PlistError, check, dump, parse, to_json
from corral.profiles import custom

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "apple-mdm"
FILES = sorted(FIXTURES.glob("*/*.plist"))
MAX = 4 * 1024 * 1024
HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
)


def name(path: Path) -> str:
    return str(path.relative_to(FIXTURES))


def fixture(relative: str) -> dict[str, Any]:
    return parse((FIXTURES / relative).read_bytes(), max_bytes=MAX)


def plist(inner: str, head: str = HEAD) -> bytes:
    return f'{head}<plist version="1.0">{inner}</plist>'.encode()


def value(xml: str) -> bytes:
    """A check-in-like dictionary holding ``xml`` under the key Value."""
    return plist(f"<dict><key>MessageType</key><string>Test</string><key>Value</key>{xml}</dict>")


def refused(body: bytes, **kwargs: Any) -> str:
    """The refusal's message (any exception but PlistError fails the test)."""
    with pytest.raises(PlistError) as caught:
        parse(body, max_bytes=kwargs.get("max_bytes", MAX))
    message = str(caught.value)
    assert len(message) <= 200, message  # never echoes the input
    return message


# ------------------------------------------------------------------------------------ real device messages
def test_every_fixture_is_here() -> None:
    assert len(FILES) == 17, "tests/fixtures/apple-mdm is incomplete"
    for folder in ("nanomdm", "micromdm-2016"):
        assert (FIXTURES / folder / "LICENSE").is_file()


@pytest.mark.parametrize("path", FILES, ids=name)
def test_a_real_device_message_parses(path: Path) -> None:
    message = parse(path.read_bytes(), max_bytes=MAX)
    assert isinstance(message, dict)
    assert "MessageType" in message or "Status" in message
    assert parse(dump(message), max_bytes=MAX) == message
    json.dumps(to_json(message), allow_nan=False)  # storable as JSONB


def test_concrete_values_of_real_messages() -> None:
    authenticate = fixture("nanomdm/Authenticate.2.plist")
    assert authenticate["MessageType"] == "Authenticate"
    assert authenticate["Model"] == "iMac14,2"
    assert authenticate["Challenge"] == b"apple"
    token_update = fixture("nanomdm/TokenUpdate.1.plist")
    assert len(token_update["Token"]) == 32
    assert len(token_update["UnlockToken"]) == 1288
    user = fixture("micromdm-2016/macos_10.11.x_token_update_user.plist")
    assert user["MessageType"] == "TokenUpdate"
    assert user["UserShortName"] == "admin"
    assert user["NotOnConsole"] is False
    error = fixture("micromdm-2016/macos_10.11.x_error_invalid_request_type.plist")
    assert error["Status"] == "Error"
    assert error["ErrorChain"][0]["ErrorCode"] == 12021
    assert error["ErrorChain"][0]["LocalizedDescription"].startswith("“OSUpdateStatus”")


def test_a_date_in_device_information_becomes_iso_8601_utc() -> None:
    information = fixture("micromdm-2016/macos_10.11.x_device_information.plist")
    updates = information["QueryResponses"]["OSUpdateSettings"]
    assert updates["PreviousScanDate"] == datetime(2016, 11, 3, 3, 12, 26)
    stored = to_json(information)
    assert stored["QueryResponses"]["OSUpdateSettings"]["PreviousScanDate"] == "2016-11-03T03:12:26Z"
    assert isinstance(stored["QueryResponses"]["DeviceCapacity"], float)


def test_dump_keeps_the_order_keys_were_given_in() -> None:
    command = {"Command": {"RequestType": "DeviceInformation", "Queries": ["UDID"]}, "CommandUUID": "x"}
    xml = dump(command)
    assert xml.index(b"<key>Command</key>") < xml.index(b"<key>CommandUUID</key>")
    assert xml.startswith(b"<?xml")
    assert parse(xml, max_bytes=MAX) == command


# ------------------------------------------------------------------------------------------------ to_json
def test_to_json_drops_data_unless_its_key_is_kept() -> None:
    token_update = fixture("nanomdm/TokenUpdate.1.plist")
    stored = to_json(token_update)
    assert "Token" not in stored and "UnlockToken" not in stored
    assert stored["Topic"] == token_update["Topic"]
    kept = to_json(token_update, keep_bytes=frozenset({"UnlockToken"}))
    assert "Token" not in kept
    assert base64.b64decode(kept["UnlockToken"]) == token_update["UnlockToken"]


def test_to_json_data_in_arrays_follows_the_nearest_key() -> None:
    certificates = fixture("micromdm-2016/macos_10.11.x_certificate_list.plist")
    stored = to_json(certificates)
    assert [sorted(c) for c in stored["CertificateList"]] == [["CommonName", "IsIdentity"]] * 2
    kept = to_json(certificates, keep_bytes=frozenset({"Data"}))
    assert base64.b64decode(kept["CertificateList"][1]["Data"]) == certificates["CertificateList"][1]["Data"]
    assert to_json({"Blobs": [b"a", 1, b"b"]}) == {"Blobs": [1]}
    assert to_json({"Blobs": [b"a"]}, keep_bytes=frozenset({"Blobs"})) == {"Blobs": ["YQ=="]}


def test_to_json_leaves_the_original_alone_and_refuses_foreign_values() -> None:
    original = {"When": datetime(2024, 2, 29, 23, 59, 59), "Data": b"x", "Nested": [{"N": 1}]}
    assert to_json(original) == {"When": "2024-02-29T23:59:59Z", "Nested": [{"N": 1}]}
    assert original["Data"] == b"x" and isinstance(original["When"], datetime)
    with pytest.raises(TypeError):
        to_json({"Set": {1, 2}})


# ---------------------------------------------------------------------------------------------- the limits
def nested_dicts(levels: int) -> bytes:
    """``levels`` dictionaries, each inside the one before, the outermost at the top level."""
    return plist("<dict><key>a</key>" * (levels - 1) + "<dict/>" + "</dict>" * (levels - 1))


def test_the_limits_admit_values_at_their_edge() -> None:
    assert parse(nested_dicts(32), max_bytes=MAX)
    for edge in (2**64 - 1, -(2**63)):
        assert parse(value(f"<integer>{edge}</integer>"), max_bytes=MAX)["Value"] == edge
    assert len(parse(value(f"<string>{'é' * 65536}</string>"), max_bytes=MAX)["Value"]) == 65536
    data = base64.b64encode(b"\0" * 1024 * 1024).decode()
    assert len(parse(value(f"<data>{data}</data>"), max_bytes=MAX)["Value"]) == 1024 * 1024
    # the top-level dictionary, its two values, and an array of the rest
    assert parse(value("<array>" + "<true/>" * (MAX_NODES - 3) + "</array>"), max_bytes=MAX)
    body = (FIXTURES / "nanomdm/Authenticate.2.plist").read_bytes()
    assert parse(body, max_bytes=len(body))
    assert parse(b"\xef\xbb\xbf" + plist("<dict/>"), max_bytes=MAX) == {}


def test_a_refusal_names_the_path() -> None:
    device_name = f"<key>DeviceName</key><string>{'x' * 70_000}</string>"
    body = plist(f"<dict><key>QueryResponses</key><dict>{device_name}</dict></dict>")
    assert refused(body) == "QueryResponses.DeviceName: string longer than 65536 characters"
    chain = "<array><dict/><dict><key>ErrorCode</key><real>nan</real></dict></array>"
    assert refused(plist(f"<dict><key>ErrorChain</key>{chain}</dict>")) == (
        "ErrorChain[1].ErrorCode: a real number that is not finite (NaN or infinity)"
    )
    long_key = "K" * 5000
    message = refused(plist(f"<dict><key>{long_key}</key><integer>{2**70}</integer></dict>"))
    assert message == f"'{'K' * 40}'…: integer outside the 64-bit range"


LAUGHS = ['<!ENTITY lol0 "lol">'] + [
    f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10)
]
BILLION_LAUGHS = plist(
    "<dict><key>a</key><string>&lol9;</string></dict>",
    head='<?xml version="1.0"?>\n<!DOCTYPE plist [\n' + "\n".join(LAUGHS) + "\n]>\n",
)
INTERNAL_ENTITY = plist(
    "<dict><key>a</key><string>&x;</string></dict>",
    head='<?xml version="1.0"?>\n<!DOCTYPE plist [<!ENTITY x "expanded">]>\n',
)
FILE_ENTITY = plist(
    "<dict><key>a</key><string>&xxe;</string></dict>",
    head='<?xml version="1.0"?>\n<!DOCTYPE plist [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n',
)


def http_entities(port: int) -> list[bytes]:
    url = f"http://127.0.0.1:{port}/evil.dtd"
    return [
        plist(
            "<dict><key>a</key><string>&xxe;</string></dict>",
            head=f'<?xml version="1.0"?>\n<!DOCTYPE plist [<!ENTITY xxe SYSTEM "{url}">]>\n',
        ),
        plist(  # a parameter entity: expat would read it while still in the DTD
            "<dict/>", head=f'<?xml version="1.0"?>\n<!DOCTYPE plist [<!ENTITY % p SYSTEM "{url}"> %p;]>\n'
        ),
        plist(  # an external DTD, no declaration in the document itself
            "<dict><key>a</key><string>&xxe;</string></dict>",
            head=f'<?xml version="1.0"?>\n<!DOCTYPE plist SYSTEM "{url}">\n',
        ),
    ]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket on loopback that no parse may connect to."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        yield server
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected


@pytest.mark.parametrize(
    "body", [BILLION_LAUGHS, INTERNAL_ENTITY, FILE_ENTITY], ids=["billion-laughs", "internal", "file"]
)
def test_entity_declarations_are_refused_by_both_layers(body: bytes) -> None:
    assert "entity declarations" in refused(body)
    # plistlib on its own (our prolog check aside) refuses the declaration too: the second layer.
    with pytest.raises(plistlib.InvalidFileException, match="entity declarations are not supported"):
        plistlib.loads(body, fmt=plistlib.FMT_XML)


def test_external_entities_and_dtds_are_refused_and_never_fetched(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    for body in http_entities(port):
        assert "entity declarations" in refused(body)
    # Without our check, plistlib parses an external DTD it never reads: expat then skips the undefined
    # entity silently (an empty string). Nothing is fetched either way (the listener saw no connection).
    assert plistlib.loads(http_entities(port)[2], fmt=plistlib.FMT_XML) == {"a": ""}


def test_older_apple_doctype_is_accepted() -> None:
    head = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE plist PUBLIC "-//Apple Computer//DTD PLIST 1.0//EN" '
        '"http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
    )
    assert parse(plist("<dict/>", head=head), max_bytes=MAX) == {}
    assert parse(plist("<dict/>", head=""), max_bytes=MAX) == {}


@pytest.mark.parametrize("encoding", ["nanUTF-8", "ISO-8859-1", "shift_jis", "utf-16", "rot13", "idna"])
def test_an_encoding_other_than_utf_8_is_refused(encoding: str) -> None:
    head = f'<?xml version="1.0" encoding="{encoding}"?>\n'
    assert refused(plist("<dict/>", head=head)) == "only UTF-8 property lists are accepted"
    assert parse(plist("<dict/>", head='<?xml version="1.0" encoding="utf-8"?>'), max_bytes=MAX) == {}


def deep_arrays(levels: int) -> bytes:
    return value("<array>" * levels + "</array>" * levels)


ATTACKS: dict[str, tuple[bytes, str]] = {
    "binary": (plistlib.dumps({"a": 1}, fmt=plistlib.FMT_BINARY), "binary property lists are not accepted"),
    "garbage": (b"\x00\x01\x02 not xml at all", "not an XML property list"),
    "json": (b'{"MessageType": "Authenticate"}', "not an XML property list"),
    "html": (b"<html><body>hi</body></html>", "not an XML property list"),
    "utf-16": (HEAD.encode("utf-16") + "<plist><dict/></plist>".encode("utf-16-le"), "not an XML"),
    "empty": (b"", "empty"),
    "whitespace": (b" \r\n\t", "empty"),
    "top-level array": (plist("<array><string>a</string></array>"), "dictionary at its top level"),
    "top-level string": (plist("<string>a</string>"), "dictionary at its top level"),
    "no root": (HEAD.encode() + b"<plist></plist>", "dictionary at its top level"),
    "33-deep dictionaries": (nested_dicts(33), ".".join(["a"] * 32) + ": nested deeper than 32 levels"),
    "10k-deep arrays": (deep_arrays(10_000), "Value[0][0]"),
    "200k-deep arrays": (deep_arrays(200_000), "deeper than 32 levels"),
    "10k-deep top-level array": (plist("<array>" * 10_000 + "</array>" * 10_000), "top level"),
    "unclosed 300k-deep arrays": (value("<array>" * 300_000), "not a valid XML property list"),
    "100,001 values": (
        value("<array>" + "<true/>" * (MAX_NODES - 2) + "</array>"),
        "more than 100000 values",
    ),
    "70 KiB string": (value(f"<string>{'x' * 70 * 1024}</string>"), "Value: string longer than 65536"),
    "70 KiB key": (plist(f"<dict><key>{'k' * 70 * 1024}</key><true/></dict>"), "key longer than 65536"),
    "2 MiB data": (value(f"<data>{base64.b64encode(bytes(2 * 1024 * 1024)).decode()}</data>"), "data larger"),
    "integer 2**70": (value(f"<integer>{2**70}</integer>"), "Value: integer outside the 64-bit range"),
    "integer -2**63-1": (value(f"<integer>{-(2**63) - 1}</integer>"), "outside the 64-bit range"),
    "5,000-digit integer": (value(f"<integer>{'9' * 5000}</integer>"), "not a valid XML property list"),
    "50,000 hex digits": (value(f"<integer>0x{'f' * 50_000}</integer>"), "outside the 64-bit range"),
    "integer garbage": (value(f"<integer>{'z' * 5000}</integer>"), "invalid literal for int()"),
    "real garbage": (value(f"<real>{'z' * 5000}</real>"), "could not convert string to float"),
    "nan": (value("<real>nan</real>"), "not finite"),
    "inf": (value("<real>inf</real>"), "not finite"),
    "-infinity": (value("<real>-Infinity</real>"), "not finite"),
    "real overflowing to inf": (value(f"<real>1e{'9' * 400}</real>"), "not finite"),
    "invalid UTF-8": (value("<string>x</string>").replace(b">x<", b">\xff\xfe<"), "not well-formed"),
    "oversized body": ((FIXTURES / "nanomdm/TokenUpdate.1.plist").read_bytes(), "larger than 1000 bytes"),
    "date without a match": (value("<date>yesterday</date>"), "not a valid XML property list"),
    "date out of range": (value("<date>2016-13-45T00:00:00Z</date>"), "month must be in 1..12"),
    "year zero": (value("<date>0000-01-01T00:00:00Z</date>"), "year 0 is out of range"),
    "bad base64": (value("<data>QQ</data>"), "not a valid XML property list"),
    "key without a value": (plist("<dict><key>a</key></dict>"), "missing value for key"),
    "value without a key": (plist("<dict><string>a</string></dict>"), "unexpected element"),
    "key in an array": (value("<array><key>a</key></array>"), "unexpected key"),
    "two roots": (plist("<dict/>") + b"<plist><dict/></plist>", "junk after document element"),
    "truncated": ((FIXTURES / "nanomdm/Authenticate.2.plist").read_bytes()[:300], "not a valid XML"),
    "undefined entity": (
        plist("<dict><key>a</key><string>&nope;</string></dict>", head=""),
        "undefined entity",
    ),
}


@pytest.mark.parametrize(("body", "expected"), list(ATTACKS.values()), ids=list(ATTACKS))
def test_a_hostile_or_malformed_body_is_refused(body: bytes, expected: str) -> None:
    max_bytes = 1000 if expected.startswith("larger than 1000") else MAX
    assert len(body) <= MAX or max_bytes < MAX
    assert expected in refused(body, max_bytes=max_bytes)


# ------------------------------------------------------------------------------------------ random input
XML_TOKENS = [
    b"<dict>", b"</dict>", b"<array>", b"</array>", b"<key>", b"</key>", b"<string>", b"</string>",
    b"<integer>", b"</integer>", b"<real>", b"</real>", b"<data>", b"</data>", b"<date>", b"</date>",
    b"<true/>", b"<false/>", b"<dict/>", b"<array/>", b"&amp;", b"&", b"<", b"]]>", b"<![CDATA[", b"\xff",
    b"\xc3", b"\x00", b"nan", b"inf", b"0x", b"-", b"99999999999999999999999", b"<!DOCTYPE plist [", b"]>",
    b'<!ENTITY a "b">', b"&a;", b"<plist>", b"</plist>", b"<?xml version='1.0'?>", b"bplist00",
    b"\xef\xbb\xbf",
]  # fmt: skip
FIXTURE_BYTES = [path.read_bytes() for path in FILES]


def only_plist_error(body: bytes) -> None:
    """parse either refuses with PlistError or returns a dictionary that is storable as JSON."""
    try:
        message = parse(body, max_bytes=MAX)
    except PlistError as exc:
        assert len(str(exc)) <= 200
        return
    assert isinstance(message, dict)
    json.dumps(to_json(message), allow_nan=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=512), st.builds(bytes.__add__, st.sampled_from(XML_TOKENS), st.binary())))
def test_random_bytes_raise_nothing_but_plist_error(body: bytes) -> None:
    only_plist_error(body)


edits = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=5000),
        st.sampled_from(["insert", "replace", "delete", "truncate"]),
        st.one_of(st.sampled_from(XML_TOKENS), st.binary(min_size=1, max_size=8)),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIXTURE_BYTES), edits)
def test_mutated_device_messages_raise_nothing_but_plist_error(
    original: bytes, changes: list[tuple[int, str, bytes]]
) -> None:
    body = bytearray(original)
    for position, operation, chunk in changes:
        at = position % (len(body) + 1)
        if operation == "insert":
            body[at:at] = chunk
        elif operation == "replace":
            body[at : at + len(chunk)] = chunk
        elif operation == "delete":
            del body[at : at + len(chunk)]
        else:
            del body[at:]
    only_plist_error(bytes(body))


# ------------------------------------------------- binary graphs: the walk, and custom profiles that use it
def _sized(marker: int, count: int) -> bytes:
    return bytes([marker | count]) if count < 15 else bytes([marker | 0xF, 0x10, count])


def ascii_object(text: str) -> bytes:
    return _sized(0x50, len(text)) + text.encode()


def binary_plist(objects: list[bytes], top: int = 0) -> bytes:
    """A binary property list from encoded objects (one-byte references): shapes plistlib never writes, such
    as an object referenced many times or by itself."""
    out = bytearray(b"bplist00")
    offsets = []
    for encoded in objects:
        offsets.append(len(out))
        out += encoded
    table = len(out)
    out += b"".join(struct.pack(">H", offset) for offset in offsets)
    return bytes(out + struct.pack(">6xBBQQQ", 2, 1, len(objects), top, table))


def profile_with(extra: list[bytes]) -> bytes:
    """A binary .mobileconfig whose key "X" holds object 12 (the first of ``extra``)."""
    keys = ["PayloadType", "PayloadIdentifier", "PayloadUUID", "PayloadVersion", "PayloadContent", "X"]
    values = ["Configuration", "com.example.bomb", str(uuid.uuid4())]
    objects = [
        _sized(0xD0, 6) + bytes(range(1, 7)) + bytes([7, 8, 9, 10, 11, 12]),
        *(ascii_object(k) for k in keys),
        *(ascii_object(v) for v in values),
        b"\x10\x01",  # PayloadVersion 1
        b"\xa0",  # PayloadContent: an empty array
        *extra,
    ]
    return binary_plist(objects)


# Object 12 on: each array holds the next one 14 times (14**9 values once expanded, in a few hundred bytes).
SHARED = [_sized(0xA0, 14) + bytes([13 + level]) * 14 for level in range(9)] + [b"\x09"]
CYCLE = [b"\xa1\x0c"]  # an array whose only item is itself
NULL = [b"\x00"]


def test_the_walk_ends_on_shared_and_circular_references() -> None:
    shared = plistlib.loads(profile_with(SHARED), fmt=plistlib.FMT_BINARY)
    with pytest.raises(PlistError, match=f"more than {MAX_NODES} values"):
        check(shared)
    cycle = plistlib.loads(profile_with(CYCLE), fmt=plistlib.FMT_BINARY)
    assert cycle["X"][0] is cycle["X"]
    with pytest.raises(PlistError, match=r"X(\[0\]){31}: nested deeper than 32 levels"):
        check(cycle)
    with pytest.raises(PlistError, match=r"X: a value of an unsupported type \(NoneType\)"):
        check(plistlib.loads(profile_with(NULL), fmt=plistlib.FMT_BINARY))
    with pytest.raises(PlistError, match="dictionary key that is not a string"):
        check({1: "a"})


@pytest.mark.parametrize(
    ("extra", "expected"),
    [(SHARED, "more than 100000 values"), (CYCLE, "nested deeper"), (NULL, "unsupported type")],
    ids=["shared", "cycle", "null"],
)
def test_a_binary_custom_profile_is_bounded_by_the_same_walk(extra: list[bytes], expected: str) -> None:
    # (Before the walk, "shared" re-serialised 14**9 values as XML and "cycle" raised RecursionError.)
    text = base64.b64encode(profile_with(extra)).decode()
    with pytest.raises(custom.PayloadError, match=f"not a valid property list.*{expected}"):
        custom.mobileconfig(text)
    unknown = '<?xml version="1.0" encoding="nanUTF-8"?><plist><dict/></plist>'
    with pytest.raises(custom.PayloadError, match=r"not a valid property list.*unknown encoding"):
        custom.mobileconfig(unknown)
    fine = base64.b64encode(profile_with([b"\x09"])).decode()
    assert plistlib.loads(custom.mobileconfig(fine).encode())["X"] is True
