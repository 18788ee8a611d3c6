//! `na-cni`: a chained CNI plugin that returns from ADD only once the
//! node agent enforces the pod's policy. See `na_agent::cni`.
use std::io::Read;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut stdin = Vec::new();
    // A failed read leaves it empty, which the configuration parse reports.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let (out, ok) = na_agent::cni::run(|name| std::env::var(name).ok(), &stdin).await;
    // DEL and CHECK succeed silently.
    if !out.is_empty() {
        println!("{out}");
    }
    std::process::exit(if ok { 0 } else { 1 });
}
