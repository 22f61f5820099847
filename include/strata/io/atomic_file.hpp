// strata/io/atomic_file.hpp: writing a file so that a crash, a full disk or a kill -9 at any moment
// never destroys the file already there: the bytes go to a temporary beside it, which is synced and
// then renamed over the target. Also the small OS layer (open/read/write/fsync) of strata's file
// I/O.
//
// Temporary files. The temporary of "<path>" is always "<path>.tmp": one name per target, so a
// process killed while saving leaves at most one temporary behind, and the next save of the same
// path reuses (truncates) it. A writer holds an exclusive advisory lock (flock) on the temporary
// while it writes, so a second process saving to the same path at the same time gets an error
// instead of interleaving its bytes with the first one's; a lock dies with its process, so a
// leftover of a killed writer never blocks a save. Earlier versions named the temporary
// "<path>.tmp.<pid>"; a successful save removes such files when their process no longer runs.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>

#if defined(_WIN32)
#include <fcntl.h>
#include <io.h>
#include <process.h>
#include <share.h>
#include <sys/stat.h>
#else
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#include "strata/core/error.hpp"

namespace strata::io {

/// The temporary an atomic write of `path` goes through: "<path>.tmp".
inline std::string temp_path(const std::string& path) { return path + ".tmp"; }

namespace detail {

inline std::string errno_text(int err) {
  return std::error_code(err, std::generic_category()).message();
}

#if defined(_WIN32)
inline int sys_open_read(const char* p) { return ::_open(p, _O_RDONLY | _O_BINARY); }
/// Opens (creating) a temporary for writing, exclusively: Windows' share mode denies other opens.
inline int sys_open_temp(const char* p) {
  int fd = -1;
  (void)::_sopen_s(&fd, p, _O_WRONLY | _O_CREAT | _O_TRUNC | _O_BINARY, _SH_DENYRW,
                   _S_IREAD | _S_IWRITE);
  return fd;
}
/// The exclusive share mode above is the lock; 0 = held.
inline int sys_try_lock(int) { return 0; }
inline bool sys_same_file(int, const char*) { return true; }
inline int sys_truncate(int) { return 0; }
inline long long sys_read(int fd, void* buf, std::size_t n) {
  return ::_read(fd, buf, static_cast<unsigned>(std::min<std::size_t>(n, 1u << 30)));
}
inline long long sys_write(int fd, const void* buf, std::size_t n) {
  return ::_write(fd, buf, static_cast<unsigned>(std::min<std::size_t>(n, 1u << 30)));
}
inline int sys_sync(int fd) { return ::_commit(fd); }
inline std::size_t sys_size_hint(int fd) {
  struct _stat64 st;
  return ::_fstat64(fd, &st) == 0 && st.st_size > 0 ? static_cast<std::size_t>(st.st_size) : 0;
}
inline int sys_close(int fd) { return ::_close(fd); }
inline long long sys_pid() { return ::_getpid(); }
inline bool sys_process_gone(long long) { return false; }
inline void sync_directory(const std::string&) {}
#else
inline int sys_open_read(const char* p) { return ::open(p, O_RDONLY | O_CLOEXEC); }
/// Opens (creating) a temporary for writing without truncating it: whoever holds its lock may
/// still be writing it.
inline int sys_open_temp(const char* p) { return ::open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644); }
/// Takes the exclusive lock of fd without waiting: 0 = held, -1 with errno EWOULDBLOCK = another
/// open file holds it.
inline int sys_try_lock(int fd) {
  int r;
  do r = ::flock(fd, LOCK_EX | LOCK_NB);
  while (r != 0 && errno == EINTR);
  return r;
}
/// Whether the name p still refers to the open file fd (the previous holder of the lock may have
/// renamed or removed it before releasing the lock).
inline bool sys_same_file(int fd, const char* p) {
  struct stat a, b;
  return ::fstat(fd, &a) == 0 && ::stat(p, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}
inline int sys_truncate(int fd) { return ::ftruncate(fd, 0); }
inline long long sys_read(int fd, void* buf, std::size_t n) {
  return ::read(fd, buf, std::min<std::size_t>(n, std::size_t{1} << 30));
}
inline long long sys_write(int fd, const void* buf, std::size_t n) {
  return ::write(fd, buf, std::min<std::size_t>(n, std::size_t{1} << 30));
}
inline int sys_sync(int fd) { return ::fsync(fd); }
inline std::size_t sys_size_hint(int fd) {
  struct stat st;
  return ::fstat(fd, &st) == 0 && st.st_size > 0 ? static_cast<std::size_t>(st.st_size) : 0;
}
inline int sys_close(int fd) { return ::close(fd); }
inline long long sys_pid() { return static_cast<long long>(::getpid()); }
/// True when no process with this id exists (kill(pid, 0) fails with ESRCH).
inline bool sys_process_gone(long long pid) {
  return pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}
/// Best effort: makes the rename itself durable. Failure is ignored (the file is already in place).
inline void sync_directory(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  (void)::close(fd);
}
#endif

}  // namespace detail

/// Removes "<path>.tmp.<pid>" files (the temporary name of earlier strata versions) whose process
/// no longer runs; nothing else is touched: not other files' temporaries, not names with anything
/// but digits after ".tmp.", not the temporary of a process that still runs. Returns how many were
/// removed. Errors (an unreadable directory, say) are ignored: this is housekeeping.
inline int remove_stale_temporaries(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const std::string prefix = target.filename().string() + ".tmp.";
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  int removed = 0;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.size() > prefix.size() + 19
        || name.compare(0, prefix.size(), prefix) != 0)
      continue;
    const std::string digits = name.substr(prefix.size());
    if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    const long long pid = std::stoll(digits);
    if (pid == detail::sys_pid() || !detail::sys_process_gone(pid)) continue;
    std::error_code rm;
    if (it->is_regular_file(rm) && fs::remove(it->path(), rm)) ++removed;
  }
  return removed;
}

/// A file written atomically: the constructor creates (or takes over) the temporary
/// temp_path(target) and locks it, write() appends, commit() syncs it and renames it over the
/// target. Without commit() (an error, an exception) the destructor removes the temporary, and
/// the target is untouched. Errors are strata::Error starting "<what> <target>: " and naming the
/// temporary and the reason (errno text), e.g. "checkpoint out/m.safetensors: cannot write
/// out/m.safetensors.tmp: No space left on device".
class AtomicFile {
 public:
  explicit AtomicFile(std::string target, std::string what = "checkpoint")
      : target_(std::move(target)), temp_(temp_path(target_)), what_(std::move(what)) {
    // A holder of the lock may rename or remove the temporary just before releasing it: then the
    // name is free again and is opened anew (a few times at most; each round is another writer).
    for (int attempt = 0;; ++attempt) {
      fd_ = detail::sys_open_temp(temp_.c_str());
      if (fd_ < 0) fail_errno("cannot create ");
      if (detail::sys_try_lock(fd_) != 0) {
        const int err = errno;
        close_quietly();
        if (err == EWOULDBLOCK || err == EAGAIN)
          fail(what_, " ", target_, ": ", temp_, " is locked by another process writing ", target_,
               " (two runs saving to the same file?)");
        errno = err;
        fail_errno("cannot lock ");
      }
      if (detail::sys_same_file(fd_, temp_.c_str())) break;
      close_quietly();
      if (attempt == 8)
        fail(what_, " ", target_, ": ", temp_, " keeps being replaced by another process");
    }
    // A leftover of a killed writer (or a stale file) is overwritten from the start.
    if (detail::sys_truncate(fd_) != 0) {
      const int err = errno;
      std::remove(temp_.c_str());
      close_quietly();
      errno = err;
      fail_errno("cannot truncate ");
    }
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    // Removed while still locked, so no other writer can have taken the name over.
    if (!committed_) std::remove(temp_.c_str());
    close_quietly();
  }

  const std::string& target() const { return target_; }
  const std::string& temp() const { return temp_; }

  void write(const void* data, std::size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const long long w = detail::sys_write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        fail_errno("cannot write ");
      }
      if (w == 0) fail(what_, " ", target_, ": cannot write ", temp_, ": no progress");
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }

  /// fsync, rename over the target (still holding the lock), close, sync the directory; then
  /// removes stale temporaries of earlier versions (remove_stale_temporaries).
  void commit() {
    if (detail::sys_sync(fd_) != 0) fail_errno("cannot sync ");
#if defined(_WIN32)
    close_quietly();  // Windows renames no open file
#endif
    std::error_code ec;
    std::filesystem::rename(temp_, target_, ec);
    if (ec)
      fail(what_, " ", target_, ": cannot rename ", temp_, " to ", target_, ": ", ec.message());
    committed_ = true;
    // The data is synced and in place; a failing close cannot lose it any more.
    close_quietly();
    detail::sync_directory(target_);
    (void)remove_stale_temporaries(target_);
  }

 private:
  void close_quietly() {
    if (fd_ >= 0) (void)detail::sys_close(fd_);
    fd_ = -1;
  }

  [[noreturn]] void fail_errno(const char* action) const {
    const int err = errno;
    fail(what_, " ", target_, ": ", action, temp_, ": ", detail::errno_text(err));
  }

  std::string target_, temp_, what_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace strata::io
