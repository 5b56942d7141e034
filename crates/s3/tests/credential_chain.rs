//! Without static keys the client signs with the standard AWS credential chain. Its first source,
//! the `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` environment, is checked against the local
//! stack's S3 server (scripts/test.sh exports `.local/stack.env`); web identity (IRSA) and
//! instance profiles follow the same path in the SDK's chain. One test in its own binary: it
//! sets process environment variables.

use aws_sdk_s3::primitives::ByteStream;
use substrate_s3::S3Config;

fn setting(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} is not set (source .local/stack.env)"))
}

#[tokio::test]
async fn without_static_keys_the_client_uses_the_aws_credential_chain() {
    let mut config = S3Config::new(setting("S3_ENDPOINT"), setting("S3_REGION"), "", "");
    assert!(!config.static_keys());
    assert!(
        config.check("s3").is_ok(),
        "no keys at all is valid: the chain"
    );
    let bucket = setting("S3_MEDIA_BUCKET");
    let key = format!("chain-test/{}", std::process::id());

    // Wrong keys in the environment: the server refuses the signature, so the chain's keys are
    // really the ones used.
    std::env::set_var("AWS_ACCESS_KEY_ID", "not-a-key");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "not-a-secret");
    let refused = config
        .client()
        .put_object()
        .bucket(&bucket)
        .key(&key)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    let message = substrate_s3::error_message(&refused.expect_err("wrong keys must be refused"));
    assert!(
        [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied"
        ]
        .iter()
        .any(|code| message.contains(code)),
        "refused for its credentials, not for anything else: {message}"
    );

    std::env::set_var("AWS_ACCESS_KEY_ID", setting("S3_ACCESS_KEY_ID"));
    std::env::set_var("AWS_SECRET_ACCESS_KEY", setting("S3_SECRET_ACCESS_KEY"));
    let client = config.client();
    client
        .put_object()
        .bucket(&bucket)
        .key(&key)
        .body(ByteStream::from_static(b"signed by the chain"))
        .send()
        .await
        .expect("put with the environment's keys");
    let body = client
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .expect("get")
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(&body[..], b"signed by the chain");
    client
        .delete_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();

    // One static key without the other is a configuration error naming the missing one.
    config.access_key_id = "only-one".into();
    assert_eq!(config.check("s3").unwrap_err().0, "s3.secret_access_key");
}
