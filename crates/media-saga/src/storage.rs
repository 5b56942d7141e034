//! The object store side of the sagas: presigned PUT/GET URLs, the move of an upload to its
//! permanent key, deletes, and the bucket's lifecycle rule for abandoned uploads.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
    LifecycleRuleFilter,
};
use substrate_s3::{error_message, head, Client, ObjectHead};
use tracing::Instrument;
use uuid::Uuid;

pub struct Storage {
    /// Talks to the S3 server (HEAD, copy, delete).
    pub client: Client,
    /// Signs URLs for clients (may name another endpoint than `client`).
    pub presigner: Client,
    pub bucket: String,
    pub upload_prefix: String,
    pub files_prefix: String,
}

/// Where a saga's object lives before and after the move.
pub fn paths(
    upload_prefix: &str,
    files_prefix: &str,
    user: Uuid,
    request: Uuid,
    file_name: &str,
) -> (String, String) {
    (
        format!("{upload_prefix}/{user}/{request}/{file_name}"),
        format!("{files_prefix}/{user}/{request}/{file_name}"),
    )
}

/// `(user, request)` of a key `<prefix>/<user>/<request>/<name>` under `prefix`.
pub fn parse_key(prefix: &str, key: &str) -> Option<(Uuid, Uuid)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let mut parts = rest.splitn(3, '/');
    let user = Uuid::parse_str(parts.next()?).ok()?;
    let request = Uuid::parse_str(parts.next()?).ok()?;
    parts.next().filter(|name| !name.is_empty())?;
    Some((user, request))
}

impl Storage {
    /// A PUT URL for `key` that only accepts the declared type and length, valid from `start`
    /// for `ttl` (the same inputs give the same URL, so a repeated step signs the same one).
    pub async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        length: i64,
        start: SystemTime,
        ttl: Duration,
    ) -> Result<String, String> {
        let request = self
            .presigner
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .content_length(length)
            .presigned(presigning(start, ttl)?)
            .await
            .map_err(|e| error_message(&e))?;
        Ok(request.uri().to_string())
    }

    /// A GET URL for `key`, valid from `start` for `ttl`.
    pub async fn presign_get(
        &self,
        key: &str,
        start: SystemTime,
        ttl: Duration,
    ) -> Result<String, String> {
        let request = self
            .presigner
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(presigning(start, ttl)?)
            .await
            .map_err(|e| error_message(&e))?;
        Ok(request.uri().to_string())
    }

    /// Readiness: the bucket exists and the credentials work.
    pub async fn check_bucket(&self) -> Result<(), String> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("bucket {}: {}", self.bucket, error_message(&e)))
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectHead>, String> {
        head(&self.client, &self.bucket, key).await
    }

    /// Copies `from` to `to` and deletes `from`; returns the size of the permanent object.
    /// Repeating it after any failure is safe: when `from` is already gone, an earlier attempt
    /// finished the copy if `to` holds `size` bytes.
    pub async fn move_object(&self, from: &str, to: &str, size: i64) -> Result<i64, String> {
        let source = format!("{}/{}", self.bucket, encode_key(from));
        let span = substrate_s3::span("CopyObject", &self.bucket, to);
        let copy = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(to)
            .copy_source(source)
            .customize();
        let copied = substrate_s3::carry(copy, &span)
            .send()
            .instrument(span.clone())
            .await;
        if let Err(e) = copied {
            substrate_s3::record_error(&span, "s3_error");
            let message = error_message(&e);
            let source_gone = e.raw_response().is_some_and(|r| r.status().as_u16() == 404);
            if !source_gone {
                return Err(format!("copying {from} to {to}: {message}"));
            }
            match self.head(to).await? {
                Some(head) if head.size == size => return Ok(size),
                _ => return Err(format!("copying {from} to {to}: {message}")),
            }
        }
        self.delete(from).await?;
        Ok(size)
    }

    /// Deletes `key`; deleting a missing object succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), String> {
        let span = substrate_s3::span("DeleteObject", &self.bucket, key);
        let delete = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .customize();
        match substrate_s3::carry(delete, &span)
            .send()
            .instrument(span.clone())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(()),
            Err(e) => {
                substrate_s3::record_error(&span, "s3_error");
                Err(format!("deleting {key}: {}", error_message(&e)))
            }
        }
    }

    /// Expires objects under the upload prefix after `days` (a backstop for uploads that were
    /// signed and never completed or moved). Returns what the server said.
    pub async fn apply_upload_lifecycle(&self, days: i32) -> Result<(), String> {
        let rule = LifecycleRule::builder()
            .id("expire-abandoned-uploads")
            .filter(
                LifecycleRuleFilter::builder()
                    .prefix(format!("{}/", self.upload_prefix))
                    .build(),
            )
            .expiration(LifecycleExpiration::builder().days(days).build())
            .status(ExpirationStatus::Enabled)
            .build()
            .map_err(|e| e.to_string())?;
        let configuration = BucketLifecycleConfiguration::builder()
            .rules(rule)
            .build()
            .map_err(|e| e.to_string())?;
        self.client
            .put_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .lifecycle_configuration(configuration)
            .send()
            .await
            .map_err(|e| error_message(&e))?;
        Ok(())
    }
}

/// Validity of a presigned URL: from `start` for `ttl`.
fn presigning(start: SystemTime, ttl: Duration) -> Result<PresigningConfig, String> {
    PresigningConfig::builder()
        .start_time(start)
        .expires_in(ttl)
        .build()
        .map_err(|e| e.to_string())
}

/// A key as `x-amz-copy-source` wants it: percent-encoded except `/`.
fn encode_key(key: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(key, SET).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let (u, r) = (Uuid::new_v4(), Uuid::new_v4());
        let (upload, file) = paths("uploads", "files", u, r, "my cat.png");
        assert_eq!(upload, format!("uploads/{u}/{r}/my cat.png"));
        assert_eq!(parse_key("uploads", &upload), Some((u, r)));
        assert_eq!(parse_key("files", &file), Some((u, r)));
        assert_eq!(parse_key("files", &upload), None);
        assert_eq!(parse_key("uploads", &format!("uploads/{u}/{r}/")), None);
        assert_eq!(parse_key("uploads", "uploads/x/y/z"), None);
        assert_eq!(encode_key("a b/c+d.png"), "a%20b/c%2Bd.png");
    }
}
