@preconcurrency import Glibc
import UnderstudyCore
import UnderstudyPosix

// Signals are blocked before any thread exists, so every thread inherits the mask and only
// the main thread's sigwait sees SIGTERM (see Signals.swift for why not a Dispatch source).
Signals.blockTermination()
setvbuf(stdout, nil, _IOLBF, 0)

let args = Array(CommandLine.arguments.dropFirst())
let code = CLI.run(args)
exit(code)
