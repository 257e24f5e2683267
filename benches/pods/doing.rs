//! What the bench is doing, so that a failure names its phase, handler and pod.

tokio::task_local! {
    /// What a bench task is doing (phase, handler, pod), for the message of a failed call.
    static DOING: String;
}

/// The bench's phase, for failures outside a labelled task.
pub static PHASE: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

pub fn phase(p: &str) {
    *PHASE.lock().unwrap_or_else(|e| e.into_inner()) = p.to_owned();
    println!("{p}");
}

/// Runs `f` labelled with what it does; a panic inside says so.
pub async fn doing<T>(what: String, f: impl std::future::Future<Output = T>) -> T {
    DOING.scope(what, f).await
}

/// Every failure says where it happened before the run ends.
pub fn name_failures() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let what = DOING
            .try_with(|d| d.clone())
            .unwrap_or_else(|_| PHASE.lock().map(|p| p.clone()).unwrap_or_default());
        eprintln!("bench failed during: {what}");
        default(info);
    }));
}
