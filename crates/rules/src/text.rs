//! The text form: `purchase.amount > 500 AND user.segment == 'VIP'`. `AND` binds tighter than
//! `OR`; `NOT` and parentheses as usual; keywords are case-insensitive. Comparisons:
//! `== != > >= < <=`, `in [..]`, `not in [..]`, `prefix`, `suffix`, `contains`,
//! `between a and b`, and `field exists`. A syntax error names its 1-based column. Parentheses
//! and `NOT` nest at most [`MAX_DEPTH`] deep (deeper text would exhaust the parser's stack).

use serde_json::Value;

use crate::ast::{Expr, Op};
use crate::RuleError;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Num(serde_json::Number),
    Sym(&'static str),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

struct Lexed {
    token: Token,
    column: usize,
}

fn lex(text: &str) -> Result<Vec<Lexed>, RuleError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        let err = |message: String| RuleError::Syntax { column, message };
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let token = match c {
            '(' => Token::LParen,
            ')' => Token::RParen,
            '[' => Token::LBracket,
            ']' => Token::RBracket,
            ',' => Token::Comma,
            '\'' | '"' => {
                let mut s = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err(err("unterminated string".into())),
                        Some('\\') if chars.get(j + 1).is_some() => {
                            s.push(chars[j + 1]);
                            j += 2;
                        }
                        Some(&q) if q == c => break,
                        Some(&ch) => {
                            s.push(ch);
                            j += 1;
                        }
                    }
                }
                out.push(Lexed {
                    token: Token::Str(s),
                    column,
                });
                i = j + 1;
                continue;
            }
            '=' | '!' | '<' | '>' => {
                let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                let sym = match two.as_str() {
                    "==" => "==",
                    "!=" => "!=",
                    ">=" => ">=",
                    "<=" => "<=",
                    "<>" => "!=",
                    _ => match c {
                        '>' => ">",
                        '<' => "<",
                        '=' => "==",
                        _ => return Err(err(format!("unexpected `{c}`"))),
                    },
                };
                i += if matches!(two.as_str(), "==" | "!=" | ">=" | "<=" | "<>") {
                    2
                } else {
                    1
                };
                out.push(Lexed {
                    token: Token::Sym(sym),
                    column,
                });
                continue;
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_ascii_digit() || matches!(chars[j], '.' | 'e' | 'E' | '_'))
                {
                    j += 1;
                }
                let literal: String = chars[i..j].iter().filter(|c| **c != '_').collect();
                let number: serde_json::Number = serde_json::from_str(&literal)
                    .map_err(|_| err(format!("`{literal}` is not a number")))?;
                out.push(Lexed {
                    token: Token::Num(number),
                    column,
                });
                i = j;
                continue;
            }
            c if c.is_alphabetic() || c == '_' || c == '$' => {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_alphanumeric() || matches!(chars[j], '_' | '.' | '$' | '-'))
                {
                    j += 1;
                }
                out.push(Lexed {
                    token: Token::Ident(chars[i..j].iter().collect()),
                    column,
                });
                i = j;
                continue;
            }
            other => return Err(err(format!("unexpected `{other}`"))),
        };
        out.push(Lexed { token, column });
        i += 1;
    }
    Ok(out)
}

/// How deep parentheses and `NOT` may nest (the JSON form is bounded alike by serde_json's
/// recursion limit of 128).
pub const MAX_DEPTH: usize = 128;

struct Parser {
    tokens: Vec<Lexed>,
    pos: usize,
    end_column: usize,
    depth: usize,
}

/// Parses the text form into the same tree as the JSON form.
pub fn parse(text: &str) -> Result<Expr, RuleError> {
    let tokens = lex(text)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        end_column: text.chars().count() + 1,
        depth: 0,
    };
    if parser.tokens.is_empty() {
        return Err(RuleError::Syntax {
            column: 1,
            message: "empty condition".into(),
        });
    }
    let expr = parser.or()?;
    if parser.pos < parser.tokens.len() {
        return Err(parser.error("expected AND, OR or the end of the condition"));
    }
    Ok(expr)
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|l| &l.token)
    }

    fn column(&self) -> usize {
        self.tokens
            .get(self.pos)
            .map(|l| l.column)
            .unwrap_or(self.end_column)
    }

    fn error(&self, message: &str) -> RuleError {
        let found = match self.peek() {
            None => "the end".to_string(),
            Some(Token::Ident(s)) => format!("`{s}`"),
            Some(Token::Str(s)) => format!("'{s}'"),
            Some(Token::Num(n)) => format!("`{n}`"),
            Some(Token::Sym(s)) => format!("`{s}`"),
            Some(t) => format!("`{}`", token_text(t)),
        };
        RuleError::Syntax {
            column: self.column(),
            message: format!("{message}, found {found}"),
        }
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(s)) if s.eq_ignore_ascii_case(word))
    }

    fn keyword_at(&self, offset: usize, word: &str) -> bool {
        matches!(self.tokens.get(self.pos + offset).map(|l| &l.token), Some(Token::Ident(s)) if s.eq_ignore_ascii_case(word))
    }

    fn or(&mut self) -> Result<Expr, RuleError> {
        let mut items = vec![self.and()?];
        while self.keyword("or") {
            self.pos += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            Expr::Any(items)
        })
    }

    fn and(&mut self) -> Result<Expr, RuleError> {
        let mut items = vec![self.unary()?];
        while self.keyword("and") {
            self.pos += 1;
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            Expr::All(items)
        })
    }

    /// Runs `parse` one level deeper, refusing to go past [`MAX_DEPTH`].
    fn nested(
        &mut self,
        parse: fn(&mut Self) -> Result<Expr, RuleError>,
    ) -> Result<Expr, RuleError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(&format!(
                "parentheses and NOT nest at most {MAX_DEPTH} deep"
            )));
        }
        self.depth += 1;
        let result = parse(self);
        self.depth -= 1;
        result
    }

    fn unary(&mut self) -> Result<Expr, RuleError> {
        if self.keyword("not") {
            let inner = self.nested(|p| {
                p.pos += 1;
                p.unary()
            })?;
            return Ok(Expr::Not(Box::new(inner)));
        }
        if self.peek() == Some(&Token::LParen) {
            let inner = self.nested(|p| {
                p.pos += 1;
                p.or()
            })?;
            if self.peek() != Some(&Token::RParen) {
                return Err(self.error("expected `)`"));
            }
            self.pos += 1;
            return Ok(inner);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, RuleError> {
        let field = match self.peek() {
            Some(Token::Ident(name)) if !is_keyword(name) => name.clone(),
            _ => return Err(self.error("expected a field name")),
        };
        self.pos += 1;
        let op = match self.peek().cloned() {
            Some(Token::Sym(sym)) => {
                self.pos += 1;
                Op::parse(sym).expect("lexer symbols are operators")
            }
            Some(Token::Ident(word)) => {
                let op = if word.eq_ignore_ascii_case("not") && self.keyword_at(1, "in") {
                    self.pos += 1;
                    Op::NotIn
                } else {
                    match Op::parse(&word) {
                        Some(op)
                            if !matches!(
                                op,
                                Op::Eq | Op::Ne | Op::Gt | Op::Ge | Op::Lt | Op::Le
                            ) =>
                        {
                            op
                        }
                        _ => return Err(self.error("expected an operator")),
                    }
                };
                self.pos += 1;
                op
            }
            _ => return Err(self.error("expected an operator")),
        };
        let value = match op {
            Op::Exists => None,
            Op::In | Op::NotIn => Some(self.list()?),
            Op::Between => {
                let low = self.scalar()?;
                if !self.keyword("and") {
                    return Err(self.error("expected AND in `between … and …`"));
                }
                self.pos += 1;
                let high = self.scalar()?;
                Some(Value::Array(vec![low, high]))
            }
            _ => Some(self.scalar()?),
        };
        Ok(Expr::leaf(&field, op, value))
    }

    fn scalar(&mut self) -> Result<Value, RuleError> {
        let value = match self.peek() {
            Some(Token::Str(s)) => Value::String(s.clone()),
            Some(Token::Num(n)) => Value::Number(n.clone()),
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("true") => Value::Bool(true),
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("false") => Value::Bool(false),
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("null") => Value::Null,
            _ => {
                return Err(
                    self.error("expected a value (a number, a quoted string, true, false or null)")
                )
            }
        };
        self.pos += 1;
        Ok(value)
    }

    fn list(&mut self) -> Result<Value, RuleError> {
        if self.peek() != Some(&Token::LBracket) {
            return Err(self.error("expected `[`"));
        }
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            items.push(self.scalar()?);
            match self.peek() {
                Some(Token::Comma) => self.pos += 1,
                Some(Token::RBracket) => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.error("expected `,` or `]`")),
            }
        }
    }
}

fn is_keyword(word: &str) -> bool {
    ["and", "or", "not", "true", "false", "null"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

fn token_text(token: &Token) -> &'static str {
    match token {
        Token::LParen => "(",
        Token::RParen => ")",
        Token::LBracket => "[",
        Token::RBracket => "]",
        Token::Comma => ",",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_seed_example_parses_to_the_json_tree() {
        let text = parse("purchase.amount > 500 AND user.segment == 'VIP'").unwrap();
        let json = Expr::from_json(&json!({"all": [
            {"field": "purchase.amount", "op": ">", "value": 500},
            {"field": "user.segment", "op": "==", "value": "VIP"}
        ]}))
        .unwrap();
        assert_eq!(text, json);
    }

    #[test]
    fn precedence_parentheses_and_every_operator() {
        let expr = parse("a == 1 or b == 2 and not (c != 'x' OR d exists)").unwrap();
        assert_eq!(
            expr,
            Expr::Any(vec![
                Expr::leaf("a", Op::Eq, Some(json!(1))),
                Expr::All(vec![
                    Expr::leaf("b", Op::Eq, Some(json!(2))),
                    Expr::Not(Box::new(Expr::Any(vec![
                        Expr::leaf("c", Op::Ne, Some(json!("x"))),
                        Expr::leaf("d", Op::Exists, None),
                    ]))),
                ]),
            ])
        );
        for (text, op, value) in [
            ("f >= 1.5", Op::Ge, Some(json!(1.5))),
            ("f < -2", Op::Lt, Some(json!(-2))),
            ("f <= 3", Op::Le, Some(json!(3))),
            ("f in ['a', \"b\"]", Op::In, Some(json!(["a", "b"]))),
            ("f NOT IN [1, 2]", Op::NotIn, Some(json!([1, 2]))),
            ("f not_in [1]", Op::NotIn, Some(json!([1]))),
            ("f prefix 'ab'", Op::Prefix, Some(json!("ab"))),
            ("f suffix 'yz'", Op::Suffix, Some(json!("yz"))),
            ("f contains 'm'", Op::Contains, Some(json!("m"))),
            ("f between 10 and 20", Op::Between, Some(json!([10, 20]))),
            ("f == true", Op::Eq, Some(json!(true))),
            ("f != null", Op::Ne, Some(Value::Null)),
        ] {
            assert_eq!(parse(text).unwrap(), Expr::leaf("f", op, value), "{text}");
        }
    }

    #[test]
    fn syntax_errors_name_the_column() {
        for (text, column, fragment) in [
            ("purchase.amount > ", 19, "expected a value"),
            ("purchase.amount >> 5", 18, "expected a value"),
            ("a == 1 AND", 11, "expected a field name"),
            ("(a == 1", 8, "expected `)`"),
            ("a ~ 1", 3, "unexpected `~`"),
            ("a == 'open", 6, "unterminated"),
            ("a in [1, 2", 11, "expected `,` or `]`"),
            ("a == 1 b == 2", 8, "expected AND, OR"),
            ("a between 1 or 2", 13, "expected AND"),
        ] {
            match parse(text).unwrap_err() {
                RuleError::Syntax { column: c, message } => {
                    assert_eq!(c, column, "{text}: {message}");
                    assert!(message.contains(fragment), "{text}: {message}");
                }
                other => panic!("{text}: {other}"),
            }
        }
    }
}
