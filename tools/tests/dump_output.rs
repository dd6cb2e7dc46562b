//! `tc-dump` on a small real data dir: roots, classes, objects (fields by
//! name, the WAL applied on the image), the graph under a root, WAL
//! records with field writes by slot and name; `--json` parses.

mod common;

use common::{End, Ids, dump_bin, lines_with, make_data_dir, run};

fn dump(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec![dir.to_str().expect("utf-8")];
    all.extend_from_slice(args);
    run(dump_bin(), &all)
}

fn ok(dir: &std::path::Path, args: &[&str]) -> String {
    let (code, out, err) = dump(dir, args);
    assert_eq!(code, 0, "{args:?}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.is_empty(),
        "{args:?}: warnings on a healthy dir:\n{err}"
    );
    out
}

fn json(dir: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(dir, &all)).expect("one JSON document")
}

fn fixture() -> (tempfile::TempDir, Ids) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = make_data_dir(dir.path(), End::Drop);
    (dir, ids)
}

#[test]
fn roots_and_classes() {
    let (dir, ids) = fixture();
    let out = ok(dir.path(), &["roots"]);
    let list = ids.list.to_string();
    let dave = ids.dave.to_string();
    assert!(
        !lines_with(
            &out,
            &["people", &list, "java.util.ArrayList", "checkpoint"]
        )
        .is_empty(),
        "{out}"
    );
    assert!(
        !lines_with(&out, &["dave", &dave, "demo.Person", "wal lsn"]).is_empty(),
        "{out}"
    );
    let roots = json(dir.path(), &["roots"]);
    let roots = roots["roots"].as_array().expect("roots");
    assert_eq!(roots.len(), 3);
    assert!(
        roots
            .iter()
            .any(|r| r["name"] == "index" && r["object"] == ids.map.0)
    );

    let out = ok(dir.path(), &["classes"]);
    assert!(
        out.contains("class#1 demo.Person (plain object, checkpoint)"),
        "{out}"
    );
    assert!(out.contains("#2   friend reference"), "{out}");
    assert!(out.contains("#3   tags string[]"), "{out}");
    assert!(out.contains("java.util.HashMap (map"), "{out}");
    assert!(
        !lines_with(&out, &["class#4 demo.Pet", "wal lsn"]).is_empty(),
        "{out}"
    );
    let classes = json(dir.path(), &["classes"]);
    let person = &classes["classes"][0];
    assert_eq!(person["name"], "demo.Person");
    assert_eq!(person["fields"][1]["name"], "age");
    assert_eq!(person["fields"][1]["slot"], 1);
    assert_eq!(person["fields"][1]["kind"], "int");
}

#[test]
fn objects_show_fields_by_name_with_the_wal_applied() {
    let (dir, ids) = fixture();
    let bob = ids.bob.0.to_string();
    let out = ok(dir.path(), &["object", &bob]);
    assert!(
        out.starts_with(&format!("{} demo.Person", ids.bob)),
        "{out}"
    );
    assert!(out.contains("name = \"bob\""), "{out}");
    // 40 in the image, 41 in the WAL after the checkpoint.
    assert!(out.contains("age = 41"), "{out}");
    assert!(out.contains(&format!("friend = {}", ids.carol)), "{out}");
    assert!(out.contains("tags = null"), "{out}");
    assert!(out.contains("1 WAL change applied"), "{out}");

    let alice = json(dir.path(), &["object", &format!("@{}", ids.alice.0)]);
    assert_eq!(alice["fields"]["name"], "alice");
    assert_eq!(alice["fields"]["age"], 30);
    assert_eq!(alice["fields"]["friend"]["ref"], ids.bob.0);
    assert_eq!(alice["fields"]["tags"], serde_json::json!(["admin", null]));

    let list = ok(dir.path(), &["object", &ids.list.0.to_string()]);
    assert!(list.contains("[0] null"), "{list}");
    assert!(list.contains(&format!("[2] {}", ids.alice)), "{list}");
    let map = ok(dir.path(), &["object", &ids.map.0.to_string()]);
    assert!(map.contains(&format!("\"bob\" => {}", ids.bob)), "{map}");

    // Created only in the WAL, of a class registered only in the WAL.
    let rex = ok(dir.path(), &["object", &ids.rex.0.to_string()]);
    assert!(rex.contains("demo.Pet"), "{rex}");
    assert!(rex.contains("created in the WAL"), "{rex}");
    assert!(rex.contains(&format!("owner = {}", ids.dave)), "{rex}");

    let (code, out, _) = dump(dir.path(), &["object", &ids.eve.0.to_string()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("deleted"), "{out}");
    let (code, out, _) = dump(dir.path(), &["object", "999"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not exist"), "{out}");
}

#[test]
fn the_graph_under_a_root_shows_each_object_once() {
    let (dir, ids) = fixture();
    let out = ok(dir.path(), &["graph", "people"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with(&format!(
            "root \"people\": {} java.util.ArrayList",
            ids.list
        )),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l
            .trim_start()
            .starts_with(&format!("[2]: {} demo.Person", ids.alice))),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("friend: {} demo.Person", ids.bob))),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("friend -> {} (seen)", ids.alice))),
        "{out}"
    );
    // alice, bob, carol expanded once each, under the list.
    assert_eq!(lines.len(), 5, "{out}");

    let short = ok(dir.path(), &["graph", "people", "--depth", "1"]);
    assert!(short.contains("(depth limit)"), "{short}");
    let graph = json(dir.path(), &["graph", "index"]);
    let nodes = graph["nodes"].as_array().expect("nodes");
    assert_eq!(nodes[0]["id"], ids.map.0);
    assert!(
        nodes
            .iter()
            .any(|n| n["id"] == ids.bob.0 && n["depth"] == 1)
    );
    let (code, _, _) = dump(dir.path(), &["graph", "nope"]);
    assert_eq!(code, 1);
}

#[test]
fn wal_records_show_transactions_and_field_writes() {
    let (dir, ids) = fixture();
    let out = ok(dir.path(), &["wal"]);
    assert!(
        !lines_with(&out, &["class", "class#1 demo.Person"]).is_empty(),
        "{out}"
    );
    assert!(!lines_with(&out, &["ids", "(16 ids)"]).is_empty(), "{out}");
    assert!(
        !lines_with(
            &out,
            &[
                "tx",
                "client 7, seq 4",
                "lock \"people-lock\"",
                "roots \"dave\""
            ]
        )
        .is_empty(),
        "{out}"
    );
    // bob's age written by slot and name after the checkpoint.
    assert!(!lines_with(&out, &["#1 age = 41"]).is_empty(), "{out}");
    assert!(
        !lines_with(&out, &[&format!("{} demo.Person", ids.bob)]).is_empty(),
        "{out}"
    );
    assert!(!lines_with(&out, &["insert [0] null"]).is_empty(), "{out}");
    assert!(
        !lines_with(&out, &["delete", &ids.eve.to_string()]).is_empty(),
        "{out}"
    );

    let limited = ok(dir.path(), &["wal", "--limit", "2"]);
    assert_eq!(limited.lines().count(), 2, "{limited}");

    let json_out = ok(dir.path(), &["--json", "wal"]);
    let records: Vec<serde_json::Value> = json_out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(records.len() >= 10);
    let write = records
        .iter()
        .filter(|r| r["kind"] == "transaction")
        .flat_map(|r| {
            r["transaction"]["dnas"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|d| d["fields"].as_array().cloned().unwrap_or_default())
        .find(|f| f["name"] == "age" && f["value"] == 41)
        .expect("bob's age write");
    assert_eq!(write["slot"], 1);
    let from = records[3]["lsn"].as_u64().expect("lsn");
    let tail = ok(
        dir.path(),
        &["--json", "wal", "--from", &format!("{from:#x}")],
    );
    assert_eq!(tail.lines().count(), records.len() - 3);
}
