//! The media topics, named once: the gateway produces the intents and the client-reported
//! arrival, media-saga consumes and produces the rest, the notification-writer turns the results
//! into notifications. A topic's name is the path of its schema under `avro/`; its CloudEvents
//! type and the ids derived from a request id are the same in every service, so an arrival the
//! gateway reports and one media-saga reports from an S3 event are one event.

use uuid::Uuid;

/// A media topic: its name in the schema catalog and its CloudEvents type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    UploadIntent,
    UploadApproved,
    UploadRejected,
    UploadSigned,
    UploadReceived,
    FileReady,
    UploadConfirmed,
    UploadRetry,
    UploadDeadLetter,
    Expired,
    DownloadIntent,
    DownloadSigned,
    DownloadRejected,
    DeleteIntent,
    Deleted,
    DeleteRejected,
}

impl Topic {
    pub const ALL: [Topic; 16] = [
        Topic::UploadIntent,
        Topic::UploadApproved,
        Topic::UploadRejected,
        Topic::UploadSigned,
        Topic::UploadReceived,
        Topic::FileReady,
        Topic::UploadConfirmed,
        Topic::UploadRetry,
        Topic::UploadDeadLetter,
        Topic::Expired,
        Topic::DownloadIntent,
        Topic::DownloadSigned,
        Topic::DownloadRejected,
        Topic::DeleteIntent,
        Topic::Deleted,
        Topic::DeleteRejected,
    ];

    /// The topic's name without a prefix (the path of its schema under `avro/`).
    pub fn name(self) -> &'static str {
        match self {
            Topic::UploadIntent => "internal.media.upload.intent",
            Topic::UploadApproved => "public.media.upload.approved",
            Topic::UploadRejected => "public.media.upload.rejected",
            Topic::UploadSigned => "public.media.upload.signed",
            Topic::UploadReceived => "internal.media.upload.received",
            Topic::FileReady => "internal.media.file.ready",
            Topic::UploadConfirmed => "public.media.upload.confirmed",
            Topic::UploadRetry => "internal.media.upload.retry",
            Topic::UploadDeadLetter => "internal.media.upload.dead-letter",
            Topic::Expired => "public.media.expired.events",
            Topic::DownloadIntent => "internal.media.download.intent",
            Topic::DownloadSigned => "public.media.download.signed",
            Topic::DownloadRejected => "public.media.download.rejected",
            Topic::DeleteIntent => "internal.media.delete.intent",
            Topic::Deleted => "public.media.delete.events",
            Topic::DeleteRejected => "public.media.delete.rejected",
        }
    }

    pub fn event_type(self) -> &'static str {
        match self {
            Topic::UploadIntent => "media.upload_intent",
            Topic::UploadApproved => "media.upload_approved",
            Topic::UploadRejected => "media.upload_rejected",
            Topic::UploadSigned => "media.upload_signed",
            Topic::UploadReceived => "media.upload_received",
            Topic::FileReady => "media.file_ready",
            Topic::UploadConfirmed => "media.upload_confirmed",
            Topic::UploadRetry => "media.upload_retry",
            Topic::UploadDeadLetter => "media.upload_failed",
            Topic::Expired => "media.upload_expired",
            Topic::DownloadIntent => "media.download_intent",
            Topic::DownloadSigned => "media.download_signed",
            Topic::DownloadRejected => "media.download_rejected",
            Topic::DeleteIntent => "media.delete_intent",
            Topic::Deleted => "media.file_deleted",
            Topic::DeleteRejected => "media.delete_rejected",
        }
    }
}

/// Topic names with the configured prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.name())
    }

    /// The topic a record came from.
    pub fn of(&self, name: &str) -> Option<Topic> {
        let bare = name.strip_prefix(&self.prefix)?;
        Topic::ALL.into_iter().find(|t| t.name() == bare)
    }
}

/// The CloudEvents id of `request`'s result on `topic`; `step` tells repeated results apart
/// (a move retry's number).
pub fn event_id(request: Uuid, topic: Topic, step: u32) -> Uuid {
    crate::headers::derived_event_id(request, topic.name(), step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_names_map_back() {
        let topics = Topics::new("t1.");
        assert_eq!(
            topics.name(Topic::FileReady),
            "t1.internal.media.file.ready"
        );
        assert_eq!(
            topics.of("t1.public.media.upload.signed"),
            Some(Topic::UploadSigned)
        );
        assert_eq!(topics.of("public.media.upload.signed"), None);
        let r = Uuid::new_v4();
        assert_eq!(
            event_id(r, Topic::UploadRetry, 1),
            event_id(r, Topic::UploadRetry, 1)
        );
        assert_ne!(
            event_id(r, Topic::UploadRetry, 1),
            event_id(r, Topic::UploadRetry, 2)
        );
    }
}
