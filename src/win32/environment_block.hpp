// Windows environment blocks and UTF-8 <-> UTF-16 conversion. Pure string
// logic (char16_t, no <windows.h>), so it is unit-tested on every platform.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace modkit::win32 {

/// Strict UTF-8 to UTF-16. Returns false (and leaves `out` unspecified) on
/// invalid UTF-8: overlong forms, surrogates, values above U+10FFFF, truncated
/// sequences. An embedded NUL is converted like any other character.
bool utf8_to_utf16(std::string_view in, std::u16string& out);

/// UTF-16 to UTF-8; an unpaired surrogate becomes U+FFFD.
std::string utf16_to_utf8(std::u16string_view in);

/// Compares two variable names: < 0, 0 or > 0. Windows compares them
/// ordinally after upper-casing both (CompareStringOrdinal with ignore-case);
/// the Windows build passes a function that does exactly that.
using NameCompare = int (*)(std::u16string_view, std::u16string_view);

/// The portable default: upper-cases ASCII letters only, then compares code
/// units. Equal to Windows' order for ASCII names.
int compare_names_ascii(std::u16string_view a, std::u16string_view b);

/// The name of a "NAME=value" entry. A leading '=' belongs to the name (the
/// per-drive directories, "=C:=C:\\work"); an entry without '=' is all name.
std::u16string_view entry_name(std::u16string_view entry);

/// Splits a block as GetEnvironmentStringsW returns it (entries ended by NUL,
/// the block by an empty entry).
std::vector<std::u16string> split_environment_block(const char16_t* block);

/// The child's environment, sorted as CreateProcess requires (by name,
/// case-insensitively, in `compare`'s order):
/// - the host's entries, or with `clear` only its SYSTEMROOT (any case), which
///   Windows programs need to start; host entries without '=' are dropped,
///   and of host names that differ only in case the first is kept;
/// - minus every host entry whose name an override names (in any case);
/// - plus the overrides; of override names that differ only in case the last
///   one wins (keeping its spelling).
std::vector<std::u16string> merge_environment(const std::vector<std::u16string>& host,
                                              const std::vector<std::pair<std::u16string, std::u16string>>& overrides,
                                              bool clear, NameCompare compare = compare_names_ascii);

/// The entries joined for CREATE_UNICODE_ENVIRONMENT: each ends with a NUL and
/// one more NUL ends the block (an empty block is two NULs).
std::u16string environment_block(const std::vector<std::u16string>& entries);

/// The value of `name` in `entries` (compared with `compare`), if present.
std::optional<std::u16string> find_environment_value(const std::vector<std::u16string>& entries,
                                                     std::u16string_view name,
                                                     NameCompare compare = compare_names_ascii);

}  // namespace modkit::win32
