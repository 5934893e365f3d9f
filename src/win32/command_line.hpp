// Windows command-line building: the inverse of the parsing rules of
// CommandLineToArgvW and the MSVC C runtime. Pure string logic (UTF-8 in,
// UTF-8 out, converted to UTF-16 by the caller), so it is unit-tested and
// fuzzed on every platform.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace modkit::win32 {

/// Appends `argument` to `command_line`, quoted so that the CRT parser yields
/// it back unchanged (empty arguments, spaces, tabs, quotes, runs of
/// backslashes). Does not add a separating space.
void append_quoted_argument(std::string& command_line, std::string_view argument);

/// The full command line: the program (argv[0], which the parser reads with
/// simpler rules: quotes delimit, backslashes are literal) then each argument.
/// Returns false if `program` cannot be represented (it contains a '"').
bool build_command_line(std::string_view program, const std::vector<std::string>& args, std::string& out);

/// True for a target that cmd.exe would run (.bat or .cmd, any case). Trailing
/// dots and spaces are ignored, as the Windows file system ignores them
/// ("x.bat. " opens "x.bat").
bool is_batch_file(std::string_view path);

/// The command line that runs batch file `script` with `args` through cmd.exe
/// (`cmd.exe /e:ON /v:OFF /d /c ""script" args..."`), each argument escaped
/// for cmd.exe's own parsing as well as the CRT's: quoted when it holds
/// anything but letters, digits and #$*+-./:?@\_ (so &, |, <, >, ^, ( and )
/// are inert), '"' doubled, '%' written as %%cd:~,% (an empty substring of
/// %cd%, so no %VAR% can expand), a trailing backslash run doubled. The rules
/// are those Rust's standard library adopted after "BatBadBut"
/// (CVE-2024-24576). Returns false, with `why`, for what cannot be passed
/// safely: a script path holding '"' or '%' or ending in '\', an argument
/// holding CR, LF or NUL.
bool build_batch_command_line(std::string_view script, const std::vector<std::string>& args, std::string& out,
                              std::string& why);

/// The reference parser: splits a command line the way the MSVC C runtime
/// (2008 and later) and CommandLineToArgvW do for every command line that
/// build_command_line produces. argv[0] by the program rules, then each
/// argument (2n backslashes + '"' give n backslashes and a quote toggle,
/// 2n+1 give n and a literal '"', other backslashes are literal, '""' inside
/// quotes is a literal '"'). Used to check build_command_line on every
/// platform (unit tests, fuzzer); spawning never needs it.
std::vector<std::string> parse_command_line(std::string_view command_line);

}  // namespace modkit::win32
