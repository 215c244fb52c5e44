use super::*;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use proptest::prelude::*;

fn iterations(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// RFC 7677 section 3: user "user", password "pencil".
#[test]
fn rfc7677_test_vector() {
    let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let verifier = Verifier::with_salt(b"pencil", &salt, iterations(4096));
    let mut server = ScramServer::begin("user", Some(&verifier), "SCRAM-SHA-256").unwrap();
    server.state = State::Init;
    let first =
        server.client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO", "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0").unwrap();
    assert_eq!(
        first,
        Step::Continue(
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
                .to_vec()
        )
    );
    let last = server
        .exchange(Some(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        ))
        .unwrap();
    assert_eq!(last, Step::Success(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()));
}

/// Runs postgres-protocol's client (what conn/auth.rs uses) against the server; returns the server's
/// verdict and whether the client accepted the server's signature.
fn run(
    password: &str,
    user: &str,
    verifier: Option<&Verifier>,
    binding: ChannelBinding,
) -> Result<(), ScramError> {
    let mut client = ScramSha256::new(password.as_bytes(), binding);
    let mut server = ScramServer::begin(user, verifier, SCRAM_SHA_256)?;
    let Step::Continue(server_first) = server.exchange(Some(client.message()))? else {
        panic!("finished early")
    };
    client.update(&server_first).expect("client accepts server-first");
    match server.exchange(Some(client.message()))? {
        Step::Success(server_final) => {
            client.finish(&server_final).expect("client verifies the server signature");
            Ok(())
        }
        Step::Continue(_) => panic!("no third round in SCRAM"),
    }
}

#[test]
fn round_trip_with_our_client() {
    let verifier = Verifier::from_password("s3cret").unwrap();
    run("s3cret", "standby", Some(&verifier), ChannelBinding::unsupported()).unwrap();
    // 'y': the client could bind but thinks the server cannot; walkeeper indeed offers no -PLUS.
    run("s3cret", "standby", Some(&verifier), ChannelBinding::unrequested()).unwrap();
    // A verifier read back from its text works the same.
    let reread: Verifier = verifier.to_string().parse().unwrap();
    run("s3cret", "standby", Some(&reread), ChannelBinding::unsupported()).unwrap();
}

#[test]
fn wrong_password_and_unknown_user_fail_alike() {
    let verifier = Verifier::from_password("s3cret").unwrap();
    let wrong = run("guess", "standby", Some(&verifier), ChannelBinding::unsupported()).unwrap_err();
    let unknown = run("s3cret", "nobody", None, ChannelBinding::unsupported()).unwrap_err();
    assert_eq!(*wrong.error, errors::password_authentication_failed("standby"));
    assert_eq!(wrong.error.message, "password authentication failed for user \"standby\"");
    assert_eq!((wrong.error.severity.as_str(), wrong.error.code.as_str()), ("FATAL", "28P01"));
    assert_eq!(*unknown.error, errors::password_authentication_failed("nobody"));
    assert_eq!(unknown.log_detail.as_deref(), Some("Role \"nobody\" does not exist."));
    // The mock salt is stable per user, so repeated probes look like a real user's.
    let salt_of = |user: &str| {
        let mut s = ScramServer::begin(user, None, SCRAM_SHA_256).unwrap();
        let Step::Continue(first) = s.exchange(Some(b"n,,n=,r=abc")).unwrap() else { panic!() };
        String::from_utf8(first).unwrap().split(',').nth(1).unwrap().to_string()
    };
    assert_eq!(salt_of("nobody"), salt_of("nobody"));
    assert_ne!(salt_of("nobody"), salt_of("someone"));
}

#[test]
fn channel_binding_requests_are_refused() {
    let verifier = Verifier::from_password("pw").unwrap();
    let e = run("pw", "u", Some(&verifier), ChannelBinding::tls_server_end_point(vec![1; 32])).unwrap_err();
    assert_eq!(e.error.message, "malformed SCRAM message");
    assert_eq!(
        e.error.detail.as_deref(),
        Some("The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.")
    );
    let e = ScramServer::begin("u", Some(&verifier), "SCRAM-SHA-256-PLUS").err().unwrap();
    assert_eq!(e.error.message, "client selected an invalid SASL authentication mechanism");
    assert_eq!(e.error.code, "08P01");
}

#[test]
fn no_initial_response_gets_an_empty_challenge() {
    let verifier = Verifier::from_password("pw").unwrap();
    let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
    let mut server = ScramServer::begin("u", Some(&verifier), SCRAM_SHA_256).unwrap();
    assert_eq!(server.exchange(None).unwrap(), Step::Continue(Vec::new()));
    let Step::Continue(first) = server.exchange(Some(client.message())).unwrap() else { panic!() };
    client.update(&first).unwrap();
    let Step::Success(last) = server.exchange(Some(client.message())).unwrap() else { panic!() };
    client.finish(&last).unwrap();
}

/// What each malformed client-first message earns, in PostgreSQL's words.
#[test]
fn malformed_client_first_messages() {
    let verifier = Verifier::from_password("pw").unwrap();
    let first = |input: &[u8]| {
        let mut s = ScramServer::begin("u", Some(&verifier), SCRAM_SHA_256).unwrap();
        let e = s.exchange(Some(input)).unwrap_err();
        (e.error.message, e.error.detail.unwrap_or_default())
    };
    let m = "malformed SCRAM message".to_string();
    assert_eq!(first(b""), (m.clone(), "The message is empty.".into()));
    assert_eq!(first(b"n,,n=,r=a\0b"), (m.clone(), "Message length does not match input length.".into()));
    assert_eq!(first(b"x,,n=,r=a"), (m.clone(), "Unexpected channel-binding flag \"'x'\".".into()));
    assert_eq!(first(b"n;,n=,r=a"), (m.clone(), "Comma expected, but found character \"';'\".".into()));
    assert_eq!(first(b"n"), (m.clone(), "Comma expected, but found character \"0x00\".".into()));
    assert_eq!(first(b"n,a=admin,n=,r=a").0, "client uses authorization identity, but it is not supported");
    assert_eq!(
        first(b"n,x,n=,r=a"),
        (m.clone(), "Unexpected attribute \"'x'\" in client-first-message.".into())
    );
    assert_eq!(first(b"n,,m=ext,n=,r=a").0, "client requires an unsupported SCRAM extension");
    assert_eq!(first(b"n,,r=a"), (m.clone(), "Expected attribute \"n\" but found \"'r'\".".into()));
    assert_eq!(first(b"n,,n,r=a"), (m.clone(), "Expected character \"=\" for attribute \"n\".".into()));
    assert_eq!(first(b"n,,n="), (m.clone(), "Expected attribute \"r\" but found \"0x00\".".into()));
    assert_eq!(first(b"n,,n=,r=a b").0, "non-printable characters in SCRAM nonce");
    assert_eq!(
        first(b"n,,n=,r=a,1=x"),
        (m.clone(), "Attribute expected, but found invalid character \"'1'\".".into())
    );
    // Extensions after the nonce are ignored.
    let mut s = ScramServer::begin("u", Some(&verifier), SCRAM_SHA_256).unwrap();
    assert!(matches!(s.exchange(Some(b"n,,n=x,r=abc,e=1,f=2")), Ok(Step::Continue(_))));
}

#[test]
fn malformed_client_final_messages() {
    let verifier = Verifier::from_password("pw").unwrap();
    let last = |input: &[u8]| {
        let mut s = ScramServer::begin("u", Some(&verifier), SCRAM_SHA_256).unwrap();
        let Step::Continue(first) = s.exchange(Some(b"n,,n=,r=cn")).unwrap() else { panic!() };
        let nonce = String::from_utf8(first).unwrap().split(',').next().unwrap()[2..].to_string();
        let input = String::from_utf8(input.to_vec()).unwrap().replace("NONCE", &nonce);
        let e = s.exchange(Some(input.as_bytes())).unwrap_err();
        (e.error.message, e.error.detail.unwrap_or_default())
    };
    let proof = BASE64.encode([0u8; 32]);
    assert_eq!(
        last(format!("c=eSws,r=NONCE,p={proof}").as_bytes()).0,
        "unexpected SCRAM channel-binding attribute in client-final-message"
    );
    assert_eq!(last(b"c=biws,r=NONCE,p=AAAA").1, "Malformed proof in client-final-message.");
    assert_eq!(
        last(format!("c=biws,r=NONCE,p={proof},x=1").as_bytes()).1,
        "Garbage found at the end of client-final-message."
    );
    assert_eq!(
        last(b"c=biws,r=NONCE"),
        ("malformed SCRAM message".into(), "Attribute expected, but found end of string.".into())
    );
    assert_eq!(
        last(format!("c=biws,r=other,p={proof}").as_bytes()),
        ("invalid SCRAM response".into(), "Nonce does not match.".into())
    );
    // A wrong proof with a good nonce is the password failure.
    assert_eq!(
        last(format!("c=biws,r=NONCE,e=ext,p={proof}").as_bytes()).0,
        "password authentication failed for user \"u\""
    );
}

#[test]
fn verifier_texts() {
    let v = Verifier::with_salt(b"pw", b"0123456789abcdef", iterations(4096));
    let text = v.to_string();
    assert!(text.starts_with("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$"), "{text}");
    assert_eq!(text.parse::<Verifier>().unwrap(), v);
    assert_eq!(Verifier::from_secret(&text).unwrap(), v);
    assert!(!format!("{v:?}").contains("MDEy"), "Debug hides the secret");
    // A plaintext secret gets a fresh salt each time.
    let a = Verifier::from_secret("pw").unwrap();
    assert_ne!(a, Verifier::from_secret("pw").unwrap());
    assert_eq!(a.iterations(), 4096);
    let (stored, server) = (BASE64.encode([1u8; 32]), BASE64.encode([2u8; 32]));
    for bad in [
        format!("SCRAM-SHA-256$0:c2FsdA==${stored}:{server}"),
        format!("SCRAM-SHA-256$-1:c2FsdA==${stored}:{server}"),
        format!("SCRAM-SHA-256$x:c2FsdA==${stored}:{server}"),
        format!("SCRAM-SHA-256$4096:${stored}:{server}"),
        format!("SCRAM-SHA-256$4096:!!!${stored}:{server}"),
        format!("SCRAM-SHA-256$4096:c2FsdA==$AAAA:{server}"),
        format!("SCRAM-SHA-256$4096:c2FsdA==${stored}"),
        "SCRAM-SHA-256$4096:c2FsdA==".to_string(),
        "md5abc".to_string(),
    ] {
        let e = bad.parse::<Verifier>().unwrap_err().to_string();
        assert!(e.starts_with("invalid SCRAM verifier"), "{e}");
        assert!(!e.contains(&stored), "the error must not quote the secret: {e}");
    }
    // from_secret never takes a broken verifier for a password.
    assert!(Verifier::from_secret("SCRAM-SHA-256$broken").is_err());
}

#[test]
fn saslprep_as_postgresql_applies_it() {
    assert_eq!(&*saslprep(b"plain ASCII \x07 ok"), b"plain ASCII \x07 ok");
    assert_eq!(&*saslprep("I\u{ad}X".as_bytes()), b"IX", "soft hyphen maps to nothing");
    assert_eq!(&*saslprep("\u{2168}".as_bytes()), b"IX", "NFKC");
    assert_eq!(&*saslprep("a\u{a0}b".as_bytes()), b"a b", "non-ASCII space");
    assert_eq!(&*saslprep(b"\xff\xfe"), b"\xff\xfe", "not UTF-8: raw");
    assert_eq!(&*saslprep("\u{ad}".as_bytes()), "\u{ad}".as_bytes(), "maps to nothing: raw");
    assert_eq!(&*saslprep("\u{e9}\u{7}".as_bytes()), "\u{e9}\u{7}".as_bytes(), "prohibited: raw");
    // Equivalent spellings give the same verifier.
    let salt = [7u8; 16];
    assert_eq!(
        Verifier::with_salt("I\u{ad}X".as_bytes(), &salt, iterations(16)),
        Verifier::with_salt(b"IX", &salt, iterations(16))
    );
}

proptest! {
    #[test]
    fn arbitrary_client_messages_never_panic(
        first in proptest::collection::vec(any::<u8>(), 0..80),
        last in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let verifier = Verifier::with_salt(b"pw", b"salt", iterations(2));
        let mut s = ScramServer::begin("u", Some(&verifier), SCRAM_SHA_256).unwrap();
        if s.exchange(Some(&first)).is_ok() {
            let _ = s.exchange(Some(&last));
            let _ = s.exchange(Some(&last));
        }
    }

    #[test]
    fn structured_client_messages_never_panic(
        flag in prop_oneof![Just("n,,"), Just("y,,"), Just("p=x,,"), Just("n,a=z,")],
        attrs in proptest::collection::vec("[a-z]?=?[!-~]{0,6}", 0..5),
        final_attrs in proptest::collection::vec("[cprx]?=?[!-+/-~]{0,8}", 0..5),
    ) {
        let verifier = Verifier::with_salt(b"pw", b"salt", iterations(2));
        let mut s = ScramServer::begin("u", Some(&verifier), SCRAM_SHA_256).unwrap();
        let first = format!("{flag}{}", attrs.join(","));
        if s.exchange(Some(first.as_bytes())).is_ok() {
            let _ = s.exchange(Some(final_attrs.join(",").as_bytes()));
        }
    }
}
