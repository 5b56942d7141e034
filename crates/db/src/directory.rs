//! `user_directory`: the people who have signed in (filled by a trigger on the login
//! notifications), searched by e-mail prefix for the web app's recipient picker.

use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::DbError;

/// One person of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub user_id: Uuid,
    pub email: String,
}

/// Up to `limit` people whose e-mail starts with `prefix` (case-insensitive), by e-mail. An empty
/// prefix lists from the start of the alphabet.
pub async fn search<C: GenericClient>(
    client: &C,
    prefix: &str,
    limit: i64,
) -> Result<Vec<Person>, DbError> {
    let pattern = format!("{}%", escape_like(&prefix.to_lowercase()));
    let rows = client
        .query(
            "SELECT user_id, email FROM public.user_directory
             WHERE lower(email) LIKE $1
             ORDER BY lower(email), user_id LIMIT $2",
            &[&pattern, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Person {
            user_id: r.get(0),
            email: r.get(1),
        })
        .collect())
}

/// `LIKE` matches `%`, `_` and the escape character `\` literally once escaped.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_like;

    #[test]
    fn like_wildcards_are_literal() {
        assert_eq!(escape_like("a_b%c\\d"), "a\\_b\\%c\\\\d");
        assert_eq!(escape_like("ann@example.com"), "ann@example.com");
    }
}
