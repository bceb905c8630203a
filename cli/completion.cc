#include "cli/completion.h"

#include <map>
#include <vector>

#include <fmt/format.h>

namespace hq::cli {
namespace {

// One command of the tree: its path ("" for hq itself, "job list"), the words that may follow
// it (subcommand names, then flags).
struct Node {
  std::string path;
  std::vector<std::string> subcommands;
  std::vector<std::string> flags;
};

void walk(const CLI::App& app, const std::string& path, std::vector<Node>& out) {
  Node node{path, {}, {}};
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    node.subcommands.push_back(sub->get_name());
  }
  for (const CLI::Option* opt : app.get_options()) {
    for (const std::string& name : opt->get_lnames()) node.flags.push_back("--" + name);
    for (const std::string& name : opt->get_snames()) node.flags.push_back("-" + name);
  }
  out.push_back(node);
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    walk(*sub, path.empty() ? sub->get_name() : path + " " + sub->get_name(), out);
  }
}

std::string words_of(const Node& n) {
  std::vector<std::string> all = n.subcommands;
  all.insert(all.end(), n.flags.begin(), n.flags.end());
  return fmt::format("{}", fmt::join(all, " "));
}

// Commands are found by the words typed so far that are not flags: each word that extends a
// known path moves into that command. A flag's value is never a command name, so it does not
// mislead the walk.
std::string bash(const std::vector<Node>& nodes) {
  std::string paths, cases;
  for (const Node& n : nodes) {
    if (!n.path.empty()) paths += fmt::format("    \"{}\") return 0 ;;\n", n.path);
    cases += fmt::format("    \"{}\") words=\"{}\" ;;\n", n.path, words_of(n));
  }
  return fmt::format(R"(# bash completion for hq (made by `hq generate-completion bash`)
_hq_is_command() {{
  case "$1" in
{}  esac
  return 1
}}
_hq() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" cmd="" next word words="" i
  for ((i = 1; i < COMP_CWORD; i++)); do
    word="${{COMP_WORDS[i]}}"
    [[ $word == -* ]] && continue
    next="${{cmd:+$cmd }}$word"
    _hq_is_command "$next" && cmd="$next"
  done
  case "$cmd" in
{}  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F _hq hq
)",
                     paths, cases);
}

std::string zsh(const std::vector<Node>& nodes) {
  std::string paths, cases;
  for (const Node& n : nodes) {
    if (!n.path.empty()) paths += fmt::format("    ('{}') return 0 ;;\n", n.path);
    cases += fmt::format("    ('{}') candidates=({}) ;;\n", n.path, words_of(n));
  }
  return fmt::format(R"(#compdef hq
# zsh completion for hq (made by `hq generate-completion zsh`)
_hq_is_command() {{
  case "$1" in
{}  esac
  return 1
}}
_hq() {{
  local cmd="" next word i
  local -a candidates
  for ((i = 2; i < CURRENT; i++)); do
    word="${{words[i]}}"
    [[ $word == -* ]] && continue
    next="${{cmd:+$cmd }}$word"
    _hq_is_command "$next" && cmd="$next"
  done
  case "$cmd" in
{}  esac
  compadd -- "${{candidates[@]}}"
}}
if (( $+functions[compdef] )); then compdef _hq hq; fi
)",
                     paths, cases);
}

std::string fish(const std::vector<Node>& nodes) {
  std::string paths, completes;
  for (const Node& n : nodes) {
    if (!n.path.empty()) paths += fmt::format(" '{}'", n.path);
    const std::string condition =
        fmt::format("test (__hq_command) = 'hq{}{}'", n.path.empty() ? "" : " ", n.path);
    for (const std::string& sub : n.subcommands) {
      completes += fmt::format("complete -c hq -f -n \"{}\" -a '{}'\n", condition, sub);
    }
    for (const std::string& flag : n.flags) {
      if (flag.starts_with("--")) {
        completes += fmt::format("complete -c hq -n \"{}\" -l '{}'\n", condition, flag.substr(2));
      } else {
        completes += fmt::format("complete -c hq -n \"{}\" -s '{}'\n", condition, flag.substr(1));
      }
    }
  }
  return fmt::format(R"(# fish completion for hq (made by `hq generate-completion fish`)
set -g __hq_commands{}
function __hq_command
  set -l cmd ''
  for word in (commandline -opc)[2..-1]
    string match -q -- '-*' $word; and continue
    set -l next (string trim -- "$cmd $word")
    contains -- $next $__hq_commands; and set cmd $next
  end
  echo (string trim -- "hq $cmd")
end
{})",
                     paths, completes);
}

}  // namespace

Result<std::string> completion_script(const CLI::App& app, std::string_view shell) {
  std::vector<Node> nodes;
  walk(app, "", nodes);
  if (shell == "bash") return bash(nodes);
  if (shell == "zsh") return zsh(nodes);
  if (shell == "fish") return fish(nodes);
  return Error{fmt::format("no completion for shell '{}': use bash, zsh or fish", shell)};
}

}  // namespace hq::cli
