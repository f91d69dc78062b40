//! A typed client of the control API.

use serde::Deserialize;
use serde_json::Value;

use crate::ClientError;

/// What `POST /v1/calls` answers.
#[derive(Debug, Clone, Deserialize)]
pub struct CreatedCall {
    pub call: Value,
    pub media_url: String,
    pub resume_token: String,
    pub epoch: u64,
}

impl CreatedCall {
    pub fn call_id(&self) -> &str {
        self.call["call_id"].as_str().unwrap_or_default()
    }
}

/// Control API client for one base URL (`http://host:port`).
#[derive(Debug, Clone)]
pub struct ControlApi {
    base_url: String,
    http: reqwest::Client,
}

impl ControlApi {
    /// A client without an API key (only `/healthz`, `/readyz` and `/metrics` answer it).
    pub fn new(base_url: &str) -> ControlApi {
        ControlApi { base_url: base_url.trim_end_matches('/').to_owned(), http: reqwest::Client::new() }
    }

    /// The same client sending `Authorization: Bearer <key>` on every request, including those
    /// made through [`ControlApi::http`] (a request's own `Authorization` header wins).
    pub fn with_key(self, key: &str) -> ControlApi {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(mut value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")) {
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder().default_headers(headers).build().unwrap_or_default();
        ControlApi { base_url: self.base_url, http }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn json(response: reqwest::Response) -> Result<Value, ClientError> {
        let status = response.status().as_u16();
        let body: Value = response.json().await?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(ClientError::Api {
            status,
            code: body["error"]["code"].as_str().unwrap_or("unknown").to_owned(),
            message: body["error"]["message"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// `POST /v1/calls` with a raw JSON body, e.g. `{"program": {"name": "echo", "params": {}}}`.
    pub async fn create_call(&self, body: &Value) -> Result<CreatedCall, ClientError> {
        let response = self.http.post(format!("{}/v1/calls", self.base_url)).json(body).send().await?;
        let body = Self::json(response).await?;
        serde_json::from_value(body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub async fn get_call(&self, call_id: &str) -> Result<Value, ClientError> {
        Self::json(self.http.get(format!("{}/v1/calls/{call_id}", self.base_url)).send().await?).await
    }

    pub async fn events(&self, call_id: &str) -> Result<Value, ClientError> {
        Self::json(self.http.get(format!("{}/v1/calls/{call_id}/events", self.base_url)).send().await?).await
    }

    /// `GET /v1/calls?{query}` (e.g. `status=active&limit=10`).
    pub async fn list_calls(&self, query: &str) -> Result<Value, ClientError> {
        Self::json(self.http.get(format!("{}/v1/calls?{query}", self.base_url)).send().await?).await
    }

    pub async fn end_call(&self, call_id: &str) -> Result<Value, ClientError> {
        Self::json(self.http.post(format!("{}/v1/calls/{call_id}/end", self.base_url)).send().await?).await
    }

    pub async fn action(&self, call_id: &str, action: &Value) -> Result<Value, ClientError> {
        let url = format!("{}/v1/calls/{call_id}/actions", self.base_url);
        Self::json(self.http.post(url).json(action).send().await?).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        Ok(self.http.get(format!("{}/metrics", self.base_url)).send().await?.text().await?)
    }
}

/// Sums the samples of a metric in Prometheus text whose labels include every `labels`
/// pair (`name{a="x",…} value`). Returns 0 when there is none.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels.iter().all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            if !all {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_filters_by_name_and_labels() {
        let text =
            "# HELP x\nx_total{reason=\"a\",t=\"n\"} 2\nx_total{reason=\"b\",t=\"n\"} 3\nx_totalz 9\ny 1\n";
        assert_eq!(metric_sum(text, "x_total", &[]), 5.0);
        assert_eq!(metric_sum(text, "x_total", &[("reason", "b")]), 3.0);
        assert_eq!(metric_sum(text, "x_total", &[("reason", "c")]), 0.0);
        assert_eq!(metric_sum(text, "y", &[]), 1.0);
    }
}
