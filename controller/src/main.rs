//! `ferrolb-controller`: hands out EXTERNAL-IPs from IPPools to LoadBalancer Services.

fn main() -> std::process::ExitCode {
    ferrolb_controller::command::main()
}
