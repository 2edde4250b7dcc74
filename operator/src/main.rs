//! `clickheatmap-operator`: see [`clickheatmap_operator::cli`].

fn main() -> std::process::ExitCode {
    clickheatmap_operator::cli::main()
}
