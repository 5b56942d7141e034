//! `GET /api/v1/users?q=<e-mail prefix>&limit=`: the people a signed-in user can address a
//! direct message to (everyone who has signed in), for the web app's recipient picker, so nobody
//! has to paste a user id. Answers `{"users": [{"id", "email"}]}` sorted by e-mail.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::media::{caller, db_unavailable};
use crate::App;

/// Most people one answer lists.
const MAX_LIMIT: i64 = 50;
/// Longest prefix searched (an e-mail address is at most 254 characters).
const MAX_PREFIX_CHARS: usize = 254;

#[derive(Debug, Deserialize)]
pub struct DirectoryQuery {
    q: Option<String>,
    limit: Option<String>,
}

pub async fn search(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<DirectoryQuery>,
) -> Response {
    let result = async {
        caller(&app, &headers).await?;
        let prefix = query.q.as_deref().unwrap_or("").trim();
        if prefix.chars().count() > MAX_PREFIX_CHARS || prefix.contains('\0') {
            return Err(ApiError::invalid_field(
                "q",
                format!("at most {MAX_PREFIX_CHARS} characters, no NUL"),
            ));
        }
        let limit = match query.limit.as_deref() {
            None => 20,
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid_field("limit", format!("must be between 1 and {MAX_LIMIT}"))
                })?,
        };
        let client = app.db.get().await.map_err(|e| db_unavailable(&app, e))?;
        let people = substrate_db::directory::search(&**client, prefix, limit)
            .await
            .map_err(|e| db_unavailable(&app, e))?;
        let users: Vec<_> = people
            .into_iter()
            .map(|p| json!({"id": p.user_id, "email": p.email}))
            .collect();
        Ok::<_, ApiError>(Json(json!({ "users": users })).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
