//! deploy/grafana/smh-gateway.json against a live Prometheus: every panel query,
//! filled in as Grafana would, must answer with data.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::exposition::scrape;
use crate::prometheus::{Prometheus, encode};
use crate::repo;

/// Every `expr` in a list of Grafana panels (rows nest theirs), with its panel title.
pub fn panel_queries(panels: &Value, out: &mut Vec<(String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        panel_queries(&panel["panels"], out);
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.is_empty(),
                "a target without expr in {}",
                panel["title"]
            );
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "{}: use the datasource variable",
                panel["title"]
            );
            out.push((
                panel["title"].as_str().unwrap().to_string(),
                expr.to_string(),
            ));
        }
    }
}

pub async fn dashboard_queries_return_data(prom: &Prometheus, instance: &str) {
    let path = repo("deploy/grafana/smh-gateway.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "the dashboard needs a Prometheus datasource variable"
    );

    // Grafana's built-ins as it would fill them in, and each variable as "All".
    let mut subst: Vec<(String, String)> = [
        ("$__rate_interval", "30s"),
        ("$__interval", "30s"),
        ("$__range", "1m"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for var in vars.iter().filter(|v| v["type"] == "query") {
        let name = var["name"].as_str().unwrap();
        let all = var["allValue"]
            .as_str()
            .expect("query variables have allValue");
        subst.push((format!("${{{name}}}"), all.to_string()));
        subst.push((format!("${name}"), all.to_string()));
    }
    let fill = |expr: &str| {
        let q = subst
            .iter()
            .fold(expr.to_string(), |q, (k, v)| q.replace(k, v));
        assert!(!q.contains('$'), "unsubstituted variable in {expr}");
        q
    };

    // The variables' own queries: label_values(selector, label).
    for var in vars.iter().filter(|v| v["type"] == "query") {
        let def = var["definition"].as_str().unwrap();
        let args = def
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{def}: expected label_values(selector, label)"));
        let (selector, label) = args.rsplit_once(',').unwrap();
        let data = prom
            .api(&format!(
                "label/{}/values?match[]={}",
                label.trim(),
                encode(&fill(selector.trim()))
            ))
            .await;
        let values: Vec<&str> = data
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let want = if label.trim() == "instance" {
            instance
        } else {
            "smh-gateway"
        };
        assert_eq!(values, [want], "variable {def}");
    }

    let mut queries = Vec::new();
    panel_queries(&dash["panels"], &mut queries);
    let titles: BTreeSet<&str> = queries.iter().map(|(t, _)| t.as_str()).collect();
    for want in [
        "Requests by status",
        "Latency percentiles (request)",
        "Cache hit ratio",
        "Auth failures by reason",
        "Policy refusals by reason",
        "traffic_limit clamps",
        "Upstream errors",
        "Renewals per library",
        "Granted traffic_limit per library",
        "Rate-limited requests by limit",
        "Rate-limit backend errors",
        "Token verifications",
    ] {
        assert!(titles.contains(want), "no panel {want:?} in {titles:?}");
    }
    for q in ["0.5", "0.9", "0.99"] {
        let want = format!(
            "histogram_quantile({q}, sum by (route, le) (rate(smh_gateway_request_duration_seconds_bucket"
        );
        assert!(
            queries.iter().any(|(_, e)| e.starts_with(&want)),
            "no request latency p{q} query"
        );
    }

    // Only metrics the gateway exports: `or vector(0)` would hide a misspelt one.
    let (_, samples) = scrape(instance.parse().unwrap()).await;
    let exported: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    for (title, expr) in &queries {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("smh_gateway_") || word.starts_with("process_") {
                assert!(exported.contains(word), "{title}: {word} is not exported");
            }
        }
    }

    // Each query answers with data, and with a number: NaN alone would be a 0/0
    // or a quantile over nothing. Polled: a rate() needs two scrapes in range.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut empty = Vec::new();
    for (title, expr) in &queries {
        let q = fill(expr);
        let got = loop {
            let got = prom.query(&q).await;
            if got.iter().any(|(_, v)| !v.is_nan()) || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if got.iter().all(|(_, v)| v.is_nan()) {
            empty.push(format!("{title}: {q} = {got:?}"));
        }
    }
    assert!(
        empty.is_empty(),
        "queries without data (or only NaN):\n{}",
        empty.join("\n")
    );
}
