"""The four RFC 5769 test vectors (exact bytes from RFC 5769 §2.1-2.4)."""

REQUEST = bytes.fromhex(
    "00010058"
    "2112a442"
    "b7e7a701bc34d686fa87dfae"
    "80220010"
    "5354554e20746573"
    "7420636c69656e74"  # SOFTWARE "STUN test client"
    "00240004"
    "6e0001ff"  # PRIORITY
    "80290008"
    "932ff9b151263b36"  # ICE-CONTROLLED
    "00060009"
    "6576746a3a683676"
    "59202020"  # USERNAME "evtj:h6vY", padded with 0x20
    "00080014"
    "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"  # MESSAGE-INTEGRITY
    "80280004"
    "e57a3bcf"  # FINGERPRINT
)
REQUEST_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"

IPV4_RESPONSE = bytes.fromhex(
    "0101003c"
    "2112a442"
    "b7e7a701bc34d686fa87dfae"
    "8022000b"
    "7465737420766563"
    "746f7220"  # SOFTWARE "test vector", padded with 0x20
    "00200008"
    "0001a147e112a643"  # XOR-MAPPED-ADDRESS 192.0.2.1:32853
    "00080014"
    "2b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004"
    "c07d4c96"
)

IPV6_RESPONSE = bytes.fromhex(
    "01010048"
    "2112a442"
    "b7e7a701bc34d686fa87dfae"
    "8022000b"
    "7465737420766563"
    "746f7220"
    "00200014"
    "0002a147"
    "0113a9faa5d3f179bc25f4b5bed2b9d9"  # 2001:db8:1234:5678:11:2233:4455:6677
    "00080014"
    "a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004"
    "c8fb0b4c"
)

LONG_TERM_REQUEST = bytes.fromhex(
    "00010060"
    "2112a442"
    "78ad3433c6ad72c029da412e"
    "00060012"
    "e3839ee38388e383aae38383e382afe3"
    "82b90000"  # USERNAME (18 bytes)
    "0015001c"
    "662f2f3439396b39353464364f4c33346f4c39465354767936347341"  # NONCE
    "0014000b"
    "6578616d706c652e"
    "6f726700"  # REALM "example.org"
    "00080014"
    "f67024656dd64a3e02b8e0712e85c9a28ca89666"
)
LONG_TERM_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
LONG_TERM_PASSWORD = "The\u00adM\u00aatr\u2168"
LONG_TERM_REALM = "example.org"
LONG_TERM_NONCE = "f//499k954d6OL34oL9FSTvy64sA"
