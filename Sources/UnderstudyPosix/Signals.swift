import Glibc

/// Termination signals, handled the way swift-service-lifecycle recommends on Linux: block
/// them in every thread first (the mask is inherited), then `sigwait` on one thread. A Dispatch
/// source registers asynchronously and can miss an early SIGTERM; this cannot.
public enum Signals {
    public static func blockTermination() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
    }

    /// Blocks until SIGTERM or SIGINT arrives; returns the signal number.
    public static func waitForTermination() -> Int32 {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        var sig: Int32 = 0
        while sigwait(&set, &sig) != 0 {}
        return sig
    }
}
