"""What carries a secret (a wrapping token, a session token, a signature, an ID token) keeps
it out of its repr (a traceback's locals, an f-string in a log line): its field is
`field(repr=False)`."""


def test_no_secret_in_the_repr_of_what_carries_one():
    from chalicelib.methods.aws.proof import SignedProof
    from chalicelib.methods.aws.request import AwsLoginRequest
    from chalicelib.methods.gcp.proof import GcpLoginRequest
    from chalicelib.minter import Wrap

    token = "hvs.SECRET-wrapping-token"
    session = "IQoJb3JpZ2luX2VjSECRET-session-token"
    signature = "f" * 63 + "e"
    shown = [
        repr(Wrap(token, "acc-1", 60, "2026-11-28T00:00:00Z", "auth/approle/role/web/secret-id")),
        repr(SignedProof("https://sts.amazonaws.com/", "sts.amazonaws.com",
                         (("X-Amz-Security-Token", session), ("Authorization", f"...Signature={signature}")),
                         signature, None)),
        repr(AwsLoginRequest("web", "POST", "https://sts.amazonaws.com/", b"Action=GetCallerIdentity",
                             (("X-Amz-Security-Token", session),))),
        repr(GcpLoginRequest("web", "eyJhbGciOiJSUzI1NiJ9.SECRET.sig")),
    ]
    for text in shown:
        for secret in (token, session, signature, "SECRET"):
            assert secret not in text, text
    assert "acc-1" in shown[0] and "role='web'" in shown[2]  # what is not secret is still shown
