//! ClickHouse as a 2-shard cluster: two Debian 18.16 servers on loopback declare one cluster
//! (plain local tables behind `Distributed` ones; replication needs a Keeper). The same traffic
//! goes through a gateway on the cluster and one on a single server; the sink, spend,
//! the replay duplicate check, erasure and retention must give the same totals on both, with
//! rows really spread over both shards.

mod common;

use common::clickhouse::{
    new_db, query, shared_url, sink_config, wait_for, FlakyProxy, Mode, PrivateClickHouse,
};
use common::{client, Gateway};
use model_bridge::warehouse::spend::{spend, SpendQuery};
use model_bridge::warehouse::ClickHouseSettings;
use std::time::Duration;

async fn send(g: &Gateway, from: usize, to: usize) {
    let c = client();
    for i in from..to {
        let body = serde_json::json!({
            "model": if i % 3 == 0 { "same-name" } else { "gpt-4o-mini" },
            "messages": [{"role": "user", "content": format!("question {i}")}],
            "stream": i % 2 == 0,
            "user": format!("u{}", i % 3),
        });
        let r = c
            .post(g.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
    }
}

async fn spend_of(url: &str, db: &str) -> serde_json::Value {
    let mut s = ClickHouseSettings::local(url);
    s.database = db.to_string();
    spend(
        &s.db_client(),
        &SpendQuery {
            org: None,
            from: "2000-01-01".into(),
            to: "2100-01-01".into(),
            group_by: vec!["org", "cost_center", "model", "day"],
            filters: Vec::new(),
        },
    )
    .await
    .unwrap()
}

/// (rows, of u1, erased, prompt tokens, cost) of the usage table at `url`.
async fn usage_totals(url: &str, table: &str) -> String {
    query(
        url,
        &format!(
            "SELECT count(), countIf(end_user = 'u1'), countIf(end_user = 'erased'), \
             sum(prompt_tokens), sum(cost_nanousd) FROM {table} FORMAT TSV"
        ),
    )
    .await
    .trim()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_two_shard_cluster_gives_the_totals_of_one_server() {
    let Some(single_url) = shared_url() else {
        return;
    };
    let nodes = PrivateClickHouse::cluster("mb2", 2);
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    // The gateway writes and reads through the first node, behind a proxy that can swallow
    // answers; DDL and mutations go to each node directly.
    let proxy = FlakyProxy::start(nodes[0].http_port);
    let (db, db1) = (new_db(), new_db());
    let cluster_keys = format!(
        "cluster = \"mb2\"\nnodes = [{}]\nreplicated = false\nusage_retention_months = 1\n",
        urls.iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let gc = Gateway::start_edited(&[], "", |t| {
        sink_config(t, &proxy.url(), &db, &cluster_keys)
    });
    let gs = Gateway::start_edited(&[], "", |t| {
        sink_config(t, &single_url, &db1, "usage_retention_months = 1\n")
    });

    // Every node applied every migration, and keeps its own record of it.
    for u in &urls {
        let v = query(
            u,
            &format!("SELECT count(DISTINCT version) FROM {db}.schema_migrations"),
        )
        .await;
        assert_eq!(
            v.trim(),
            model_bridge::warehouse::migrate::MIGRATIONS
                .len()
                .to_string()
        );
    }

    send(&gc, 0, 30).await;
    send(&gs, 0, 30).await;
    // An insert lands on both shards but its answer is lost: spooled, then replayed, and the
    // duplicate check (through the distributed table) skips what landed.
    proxy.set(Mode::SwallowAnswers);
    send(&gc, 30, 40).await;
    send(&gs, 30, 40).await;
    gc.wait_metric_at_least(
        "model_bridge_sink_batches_total{outcome=\"failed\",sink=\"usage\"}",
        1.0,
        Duration::from_secs(20),
    )
    .await;
    proxy.set(Mode::Pass);
    gc.wait_metric_at_least(
        "model_bridge_sink_batches_total{outcome=\"replayed\",sink=\"usage\"}",
        1.0,
        Duration::from_secs(20),
    )
    .await;
    let dist = format!("{db}.usage_events");
    let one = format!("{db1}.usage_events");
    assert_eq!(
        wait_for(&urls[1], &format!("SELECT count() FROM {dist}"), "40", 20).await,
        "40"
    );
    assert_eq!(
        wait_for(&single_url, &format!("SELECT count() FROM {one}"), "40", 20).await,
        "40"
    );
    assert_eq!(
        query(
            &urls[0],
            &format!("SELECT uniqExact(request_id) FROM {dist}")
        )
        .await
        .trim(),
        "40",
        "no row twice"
    );
    assert!(
        gc.metric("model_bridge_usage_sink_rows_total{outcome=\"duplicate_skipped\"}")
            .await
            > 0.0,
        "the replay found the landed rows"
    );
    // Both shards hold rows.
    let mut local = 0;
    for u in &urls {
        let n: u64 = query(u, &format!("SELECT count() FROM {db}.usage_events_local"))
            .await
            .trim()
            .parse()
            .unwrap();
        assert!(n > 0, "a shard got no rows");
        local += n;
    }
    assert_eq!(local, 40);

    // Usage and spend (the rollup, through the product's spend query) match one server.
    assert_eq!(
        usage_totals(&urls[0], &dist).await,
        usage_totals(&single_url, &one).await
    );
    let (sc, ss) = (
        spend_of(&urls[1], &db).await,
        spend_of(&single_url, &db1).await,
    );
    assert_eq!(sc, ss, "spend on the cluster and on one server");
    assert_eq!(sc["total"]["requests"], 40, "{sc}");

    // Erasure reaches both shards.
    for g in [&gc, &gs] {
        let (ok, out, err) = g.cli(&["erase", "--user", "u1"]);
        assert!(ok, "{out}{err}");
    }
    let erased = usage_totals(&urls[0], &dist).await;
    assert_eq!(erased, usage_totals(&single_url, &one).await);
    let fields: Vec<&str> = erased.split('\t').collect();
    assert_eq!((fields[1], fields[2]), ("0", "13"), "{erased}");
    for u in &urls {
        assert_eq!(
            query(
                u,
                &format!("SELECT countIf(end_user = 'u1') FROM {db}.usage_events_local")
            )
            .await
            .trim(),
            "0"
        );
    }
    assert_eq!(
        spend_of(&urls[0], &db).await,
        sc,
        "erasure leaves spend alone"
    );

    // Retention drops old months on every shard.
    for u in &urls {
        query(
            u,
            &format!(
                "INSERT INTO {db}.usage_events_local (ts, request_id) VALUES ('2020-01-15 00:00:00', 'old-{}')",
                u.rsplit(':').next().unwrap()
            ),
        )
        .await;
    }
    let (ok, out, err) = gc.cli(&["retention", "apply"]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        query(
            &urls[0],
            &format!("SELECT countIf(request_id LIKE 'old-%'), count() FROM {dist} FORMAT TSV")
        )
        .await
        .trim(),
        "0\t40"
    );

    for u in &urls {
        query(u, &format!("DROP DATABASE IF EXISTS {db}")).await;
    }
    query(&single_url, &format!("DROP DATABASE IF EXISTS {db1}")).await;
}
