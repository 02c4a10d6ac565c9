"""Wire codec of RocketMQ's remoting protocol: frames to commands and back, no I/O.

A frame is ``int32 length | int32 (serializeType << 24 | headerLength) | header | body``.
We always send JSON headers; servers may answer in either JSON or the ROCKETMQ binary
header, so decoding reads the serialize type of every frame.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

from rocketmq_core.errors import ProtocolError

JSON_SERIALIZE = 0
ROCKETMQ_SERIALIZE = 1

RESPONSE_FLAG = 0b01
ONEWAY_FLAG = 0b10

#: MQVersion ordinal we announce; 409 is V4_9_8, understood by 4.9.x and 5.x servers alike.
CLIENT_VERSION = 409

_FRAME_HEAD = struct.Struct(">ii")
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
#: Largest frame, length prefix included, that RocketMQ's NettyDecoder accepts (frameMaxLength).
MAX_FRAME = 16 * 1024 * 1024

_LANGUAGES = {0: "JAVA", 1: "CPP", 2: "DOTNET", 3: "PYTHON", 4: "DELPHI", 5: "ERLANG", 6: "RUBY",
              7: "OTHER", 8: "HTTP", 9: "GO", 10: "PHP", 11: "OMS", 12: "RUST"}


@dataclass
class RemotingCommand:
    """One request or response; ext_fields values are always strings on the wire."""

    code: int
    ext_fields: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    opaque: int = 0
    flag: int = 0
    remark: str | None = None
    language: str = "PYTHON"
    version: int = CLIENT_VERSION

    @property
    def is_response(self) -> bool:
        return bool(self.flag & RESPONSE_FLAG)

    @property
    def is_oneway(self) -> bool:
        return bool(self.flag & ONEWAY_FLAG)


def encode(cmd: RemotingCommand) -> bytes:
    """Serialise a command as one frame with a JSON header.

    The fixed fields are formatted directly and only the free text goes through one shared
    encoder: a request's header costs about half of a ``json.dumps`` of the whole."""
    ext = _JSON.encode({k: v if type(v) is str else str(v) for k, v in cmd.ext_fields.items()})
    remark = "" if cmd.remark is None else ',"remark":' + _JSON.encode(cmd.remark)
    header_bytes = (f'{{"code":{int(cmd.code)},"flag":{int(cmd.flag)},"language":{_JSON.encode(cmd.language)},'
                    f'"opaque":{int(cmd.opaque)},"serializeTypeCurrentRPC":"JSON","version":{int(cmd.version)},'
                    f'"extFields":{ext}{remark}}}').encode()
    total = 4 + len(header_bytes) + len(cmd.body)
    if 4 + total > MAX_FRAME:
        # The server closes the connection on such a frame, failing every request in flight on it.
        raise ProtocolError(f"request code {cmd.code} would be a frame of {4 + total} bytes;"
                            f" RocketMQ accepts at most {MAX_FRAME}")
    return _FRAME_HEAD.pack(total, (JSON_SERIALIZE << 24) | len(header_bytes)) + header_bytes + cmd.body


def decode(frame: bytes) -> RemotingCommand:
    """Decode one frame *without* its leading length field."""
    if len(frame) < 4:
        raise ProtocolError(f"frame of {len(frame)} bytes is too short")
    (mark,) = struct.unpack_from(">i", frame, 0)
    serialize_type = (mark >> 24) & 0xFF
    header_len = mark & 0xFFFFFF
    if 4 + header_len > len(frame):
        raise ProtocolError(f"header length {header_len} exceeds frame of {len(frame)} bytes")
    header = frame[4:4 + header_len]
    body = bytes(frame[4 + header_len:])
    if serialize_type == JSON_SERIALIZE:
        cmd = _decode_json_header(header)
    elif serialize_type == ROCKETMQ_SERIALIZE:
        cmd = _decode_binary_header(header)
    else:
        raise ProtocolError(f"unknown serialize type {serialize_type}")
    cmd.body = body
    return cmd


def _decode_json_header(header: bytes) -> RemotingCommand:
    try:
        data = json.loads(header)
        ext = data.get("extFields") or {}
        return RemotingCommand(
            code=int(data.get("code", 0)),
            ext_fields={str(k): "" if v is None else str(v) for k, v in ext.items()},
            opaque=int(data.get("opaque", 0)),
            flag=int(data.get("flag", 0)),
            remark=data.get("remark"),
            language=str(data.get("language", "JAVA")),
            version=int(data.get("version", 0)),
        )
    except (ValueError, TypeError, AttributeError) as exc:  # not JSON, or not a header's shape
        raise ProtocolError(f"malformed JSON header: {exc}") from exc


def _decode_binary_header(header: bytes) -> RemotingCommand:
    def take(pos: int, length: int) -> bytes:  # a length that runs past the header is an error
        if length < 0 or pos + length > len(header):
            raise struct.error(f"{length} bytes at offset {pos} run past the {len(header)}-byte header")
        return header[pos:pos + length]

    try:
        code, lang, version, opaque, flag, remark_len = struct.unpack_from(">hbhiii", header, 0)
        pos = 17
        remark = take(pos, remark_len).decode() if remark_len > 0 else None
        pos += max(remark_len, 0)
        (ext_len,) = struct.unpack_from(">i", header, pos)
        pos += 4
        end = pos + len(take(pos, max(ext_len, 0)))
        ext: dict[str, str] = {}
        while pos < end:
            (klen,) = struct.unpack_from(">h", header, pos)
            key = take(pos + 2, klen).decode()
            pos += 2 + klen
            (vlen,) = struct.unpack_from(">i", header, pos)
            ext[key] = take(pos + 4, vlen).decode()
            pos += 4 + vlen
        if pos != end:
            raise struct.error(f"extFields end at offset {pos}, not at {end}")
    except (struct.error, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed ROCKETMQ header: {exc}") from exc
    return RemotingCommand(code=code, ext_fields=ext, opaque=opaque, flag=flag, remark=remark,
                           language=_LANGUAGES.get(lang, "OTHER"), version=version)


def frame_length(prefix: bytes) -> int:
    """Length of the frame that follows a 4-byte length prefix, checked against MAX_FRAME."""
    (length,) = struct.unpack(">i", prefix)
    if length < 4 or 4 + length > MAX_FRAME:  # MAX_FRAME counts the prefix too, as RocketMQ's decoder does
        raise ProtocolError(f"frame length {length} out of range")
    return length
