//! Judging an answer: what a step expected, and how an answer reads in one
//! line.

use serde_json::Value;

use super::step::{Expect, Step};

/// What came back from one step: the HTTP status and the JSON body (for a
/// job, the final receipt when the job ended).
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

pub(super) fn is_receipt(body: &Value) -> bool {
    body.get("job_id").is_some() && body.get("status").is_some()
}

pub(super) fn is_terminal(receipt: &Value) -> bool {
    matches!(receipt.get("status").and_then(Value::as_str), Some("succeeded" | "failed" | "dead"))
}

/// A string or number at a JSON pointer, as text.
pub(super) fn text_at(body: &Value, pointer: &str) -> Option<String> {
    match body.pointer(pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The problem of an answer: the `error` of a receipt, or the body of a
/// 4xx/5xx answer.
pub(super) fn problem(answer: &Answer) -> Option<&Value> {
    match is_receipt(&answer.body) {
        true => answer.body.get("error").filter(|e| !e.is_null()),
        false => (answer.status >= 400).then_some(&answer.body),
    }
}

pub(super) fn error_code(answer: &Answer) -> Option<String> {
    problem(answer).and_then(|p| text_at(p, "/code"))
}

/// Ok, or what was expected instead. `fields` are the step's, filled.
pub(super) fn check(step: &Step, answer: &Answer, fields: &[(&str, String)]) -> Result<(), String> {
    let receipt_status = text_at(&answer.body, "/status").filter(|_| is_receipt(&answer.body));
    let code = error_code(answer);
    let ok = match step.expect {
        Expect::Status(status) => answer.status == status,
        Expect::Succeeded => receipt_status.as_deref() == Some("succeeded"),
        Expect::Failed(want) => receipt_status.as_deref() == Some("failed") && code.as_deref() == Some(want),
        Expect::Refused(codes) => {
            let refused = receipt_status.as_deref() == Some("failed") || (400..500).contains(&answer.status);
            refused && code.as_deref().is_some_and(|c| codes.contains(&c))
        }
    };
    if !ok {
        return Err(match step.expect {
            Expect::Status(status) => format!("HTTP {status}"),
            Expect::Succeeded => "a receipt with status succeeded".to_string(),
            Expect::Failed(code) => format!("a receipt with status failed and error code {code}"),
            Expect::Refused(codes) => format!("a refusal with code {}", codes.join(" or ")),
        });
    }
    let wrong: Vec<String> = fields
        .iter()
        .filter(|(pointer, want)| text_at(&answer.body, pointer).as_deref() != Some(want.as_str()))
        .map(|(pointer, want)| format!("{pointer} = {want}"))
        .collect();
    if !wrong.is_empty() {
        return Err(wrong.join(", "));
    }
    Ok(())
}

/// The one-line result of a step.
pub(super) fn summary(answer: &Answer, step: &Step, saved: &str) -> String {
    let mut line = answer.status.to_string();
    if step.job && is_receipt(&answer.body) {
        let id = text_at(&answer.body, "/job_id").unwrap_or_default();
        let status = text_at(&answer.body, "/status").unwrap_or_default();
        line.push_str(&format!(" job {id} {status}"));
    }
    if let Some(code) = error_code(answer) {
        line.push_str(&format!(" {code}"));
        if let Some(detail) = problem(answer).and_then(|p| text_at(p, "/detail")) {
            line.push_str(&format!(" ({detail})"));
        }
    }
    if !saved.is_empty() {
        line.push(' ');
        line.push_str(saved);
    }
    line
}

/// An answer as the "got" of an error message.
pub(super) fn describe(answer: &Answer) -> String {
    let mut body = answer.body.to_string();
    if body.len() > 600 {
        let cut = (0..=600).rev().find(|i| body.is_char_boundary(*i)).unwrap_or(0);
        body.truncate(cut);
        body.push('…');
    }
    format!("HTTP {} {body}", answer.status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_refusal_counts_from_the_api_or_from_a_failed_receipt() {
        let step = Step::job("t", "k", "/p", Value::Null).expect(Expect::Refused(&["FORBIDDEN", "MANDATE_REQUIRED"]));
        let problem = Answer { status: 403, body: json!({"status": 403, "code": "FORBIDDEN"}) };
        assert!(check(&step, &problem, &[]).is_ok());
        let receipt = Answer {
            status: 200,
            body: json!({"job_id": "j", "status": "failed", "error": {"code": "MANDATE_REQUIRED"}}),
        };
        assert!(check(&step, &receipt, &[]).is_ok());
        let succeeded = Answer { status: 200, body: json!({"job_id": "j", "status": "succeeded", "error": null}) };
        assert!(check(&step, &succeeded, &[]).is_err());
    }

    #[test]
    fn an_exhausted_mandate_must_show_its_code() {
        let step = Step::job("t", "k", "/p", Value::Null).expect(Expect::Failed("MANDATE_EXHAUSTED"));
        let receipt = Answer {
            status: 200,
            body: json!({"job_id": "j", "status": "failed", "error": {"code": "MANDATE_EXHAUSTED"}}),
        };
        assert!(check(&step, &receipt, &[]).is_ok());
        let other = Answer { status: 200, body: json!({"job_id": "j", "status": "failed", "error": {"code": "X"}}) };
        assert!(check(&step, &other, &[]).is_err());
    }
}
