//! Twilio's REST API, as the worker uses it: one call update (`Twiml=…`) that replaces what
//! a live Twilio call is doing. The reaper redirects a hung worker's call to a new
//! `<Connect><Stream>` with it; the `transfer` action hands a call to `<Dial>`.

use callworker_call::{TransferTarget, TwilioLeg};

use crate::config::TwilioConfig;

/// What an update achieved.
#[derive(Debug)]
pub enum RestOutcome {
    /// Twilio took the new TwiML.
    Redirected,
    /// Twilio says the call is over (a final status, 404, or error 21220).
    CallOver,
    /// Anything else, with why.
    Failed(String),
}

impl RestOutcome {
    /// The `outcome` label of `callworker_twilio_rest_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            RestOutcome::Redirected => "redirected",
            RestOutcome::CallOver => "call_over",
            RestOutcome::Failed(_) => "failed",
        }
    }
}

/// `POST {rest_api_base_url}/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json` with
/// `Twiml=twiml`, within `twilio.rest_timeout`.
pub async fn update_call(
    http: &reqwest::Client,
    cfg: &TwilioConfig,
    leg: &TwilioLeg,
    twiml: &str,
) -> RestOutcome {
    let valid_sid = |s: &str| !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric());
    if !valid_sid(&leg.account_sid) || !valid_sid(&leg.call_sid) {
        return RestOutcome::Failed("the stream's account or call SID is not a SID".into());
    }
    let url = format!(
        "{}/2010-04-01/Accounts/{}/Calls/{}.json",
        cfg.rest_api_base_url, leg.account_sid, leg.call_sid
    );
    let response = http
        .post(url)
        .timeout(cfg.rest_timeout)
        .basic_auth(&cfg.account_sid, Some(&cfg.auth_token))
        .form(&[("Twiml", twiml)])
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => return RestOutcome::Failed(format!("request failed: {e}")),
    };
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    let call_status = body.get("status").and_then(|s| s.as_str()).unwrap_or_default();
    let code = body.get("code").and_then(serde_json::Value::as_u64);
    match status {
        200..=299 if matches!(call_status, "completed" | "canceled" | "failed" | "busy" | "no-answer") => {
            RestOutcome::CallOver
        }
        200..=299 => RestOutcome::Redirected,
        // 20404: no such call; 21220: the call is not in progress (it has ended).
        404 => RestOutcome::CallOver,
        400 if code == Some(21220) => RestOutcome::CallOver,
        _ => RestOutcome::Failed(format!("HTTP {status}, code {code:?}")),
    }
}

/// A whole TwiML document that dials `target`: `<Number>` for an E.164 number, `<Sip>` for
/// a SIP URI.
pub fn dial_document(target: TransferTarget<'_>) -> String {
    let noun = match target {
        TransferTarget::Number(n) => format!("<Number>{}</Number>", crate::http::twilio::xml_escape(n)),
        TransferTarget::Sip(uri) => format!("<Sip>{}</Sip>", crate::http::twilio::xml_escape(uri)),
    };
    format!("<Response><Dial>{noun}</Dial></Response>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_documents_name_the_right_noun_and_escape() {
        assert_eq!(
            dial_document(TransferTarget::Number("+15550100")),
            "<Response><Dial><Number>+15550100</Number></Dial></Response>"
        );
        assert_eq!(
            dial_document(TransferTarget::Sip("sip:a@example.com;x=1&y=2")),
            "<Response><Dial><Sip>sip:a@example.com;x=1&amp;y=2</Sip></Dial></Response>"
        );
    }
}
