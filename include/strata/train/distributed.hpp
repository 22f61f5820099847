// strata/train/distributed.hpp: data-parallel training over MPI. Every rank holds the whole model
// and trains on its shard of every global batch; the gradients are summed across ranks with
// MPI_Iallreduce on layer-aligned buckets of the flat gradient arena, each started as soon as the
// backward pass has finished that layer (GPT::set_gradient_ready_hook), and waited for before
// clipping, so that the loss, the gradient norm and AdamW see the global values.
//
// Only builds configured with STRATA_USE_MPI=ON (which links MPI into strata::strata) can include
// this header; the rest of strata never includes it.
#pragma once

#if !__has_include(<mpi.h>)
#error \
    "strata/train/distributed.hpp needs MPI: configure strata with -DSTRATA_USE_MPI=ON (Debian: apt-get install libopenmpi-dev openmpi-bin)"
#endif

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../model/gpt.hpp"
#include "trainer.hpp"

namespace strata::mpi {

/// MPI for the lifetime of a program: MPI_Init_thread (strata calls MPI from the main thread only,
/// outside its OpenMP regions) and MPI_Finalize. Errors inside MPI calls end every rank
/// (MPI_ERRORS_ARE_FATAL), so a broken link or a dead peer never leaves a rank waiting.
class Environment {
 public:
  Environment(int* argc, char*** argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
      owner_ = true;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    // Ranks sharing this host (and its cores).
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    MPI_Comm_size(local, &local_size_);
    MPI_Comm_free(&local);
  }
  ~Environment() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owner_ && !finalized) MPI_Finalize();
  }
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  /// Ranks on this host: a rank's fair share of the host's threads is cores / local_size().
  int local_size() const { return local_size_; }

 private:
  bool owner_ = false;
  int rank_ = 0, size_ = 1, local_size_ = 1;
};

/// Prints "<program>: rank r of n: error: <message>" and ends every rank of the job (MPI_Abort):
/// what a rank does with an error that the other ranks do not share (bad input on one host, a
/// failed write), since they would otherwise wait for it in their next collective.
[[noreturn]] inline void abort_all(const char* program, const std::string& message, int code = 1) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::fprintf(stderr, "\n%s: rank %d of %d: error: %s\n", program, rank, size, message.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();  // not reached: MPI_Abort does not return
}

namespace detail {
template <typename Scalar>
MPI_Datatype datatype() {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "strata::mpi: Scalar must be float or double");
  return std::is_same_v<Scalar, float> ? MPI_FLOAT : MPI_DOUBLE;
}
// MPI counts are int: long arrays go in pieces of at most 2^30 elements.
constexpr Index kMaxCount = Index(1) << 30;

// 64-bit FNV-1a of a byte range (a fingerprint to compare replicas and datasets across ranks).
inline std::uint64_t fingerprint(const void* data, std::size_t bytes,
                                 std::uint64_t h = 1469598103934665603ull) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
// The same over the token values of a span (whatever their width in memory or on disk).
inline std::uint64_t fingerprint(const TokenSpan& tokens) {
  std::uint64_t h = 1469598103934665603ull;
  for (Index i = 0; i < tokens.size(); ++i) {
    const Token t = tokens[i];
    h = fingerprint(&t, sizeof t, h);
  }
  return h;
}
}  // namespace detail

/// How the gradients of the ranks are summed.
enum class Reduction {
  /// MPI_Iallreduce (sum) per layer-aligned bucket, started during the backward pass. The order in
  /// which the MPI library adds the ranks' values is its own (it may depend on the rank count, the
  /// message size and the network); with 2 ranks every algorithm computes g0 + g1, one rounding.
  overlapped,
  /// After the backward pass, every element is summed in rank order, ((g0 + g1) + g2) + ..., by the
  /// rank that owns its slice of the arena (MPI_Alltoallv, then MPI_Allgatherv): the result does
  /// not depend on the MPI library or the network, and equals one process that accumulates the
  /// same shards one after another. No overlap with the backward pass.
  deterministic,
};

/// Data parallelism for one model over a communicator (MPI_COMM_WORLD by default).
///
///   strata::mpi::Environment env(&argc, &argv);
///   strata::GPT<float> model(cfg);
///   strata::Trainer<float> trainer(model, data, options);   // options.batch = the global batch
///   strata::mpi::DataParallel<float> dp(model);
///   dp.check_same_data(data);
///   dp.attach(trainer);               // shard the batches, reduce the gradients every step
///   dp.broadcast_from_root(trainer);  // rank 0's parameters (and, after resume, moments)
///   trainer.run(callbacks);           // callbacks.should_stop = [&] { return dp.any(stop); }
///
/// Every rank must run the same steps: anything that decides whether a rank takes a step (a stop
/// request, an error) has to be agreed on with any() or end the job with abort_all().
template <typename Scalar>
class DataParallel {
 public:
  struct Options {
    Reduction reduction = Reduction::overlapped;
    /// Smallest bucket (elements) of the overlapped reduction: consecutive layers smaller than
    /// this are sent together, so that tiny tensors do not each pay a message's latency.
    Index min_bucket_elements = Index(1) << 16;
    /// A non-finite loss on any rank stops every rank with an error naming the ranks.
    bool stop_on_nonfinite_loss = true;
  };

  explicit DataParallel(GPT<Scalar>& model, Options options = {}, MPI_Comm comm = MPI_COMM_WORLD)
      : model_(model), opt_(options), comm_(comm) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    losses_.assign(static_cast<size_t>(size_), 0.0);
    requests_.reserve(64);
    STRATA_CHECK(opt_.min_bucket_elements >= 1, "DataParallel: min_bucket_elements ",
                 opt_.min_bucket_elements, ", expected >= 1");
    if (opt_.reduction == Reduction::overlapped && size_ > 1)
      model_.set_gradient_ready_hook([this](Index begin, Index end) { on_ready(begin, end); });
  }
  ~DataParallel() { model_.set_gradient_ready_hook({}); }
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const Options& options() const { return opt_; }

  /// Makes the trainer train on this rank's shard of every batch (options().batch must be
  /// divisible by size()) and reduce loss and gradients across ranks after every backward pass.
  void attach(Trainer<Scalar>& trainer) {
    trainer.set_data_parallel(rank_, size_, [this](double loss) { return reduce(loss); });
  }

  /// Sums the gradients of all ranks (waiting for the buckets started during the backward pass, or
  /// running the deterministic reduction), divides them by size() and returns the global mean loss
  /// (every rank's shard has the same number of sequences, so the mean of the ranks' means is the
  /// mean over the global batch). The time spent here is communication_seconds().
  double reduce(double local_loss) {
    const auto t0 = std::chrono::steady_clock::now();
    VectorMap<Scalar> g = model_.gradients();
    double loss = local_loss;
    if (size_ > 1) {
      std::vector<double>& losses = losses_;  // sized once: no allocation per step
      if (opt_.reduction == Reduction::overlapped) {
        STRATA_CHECK(pending_end_ == pending_begin_ && started_ == g.size(),
                     "DataParallel::reduce: the backward pass reported ", started_, " of ",
                     g.size(), " gradients (reduce must follow forward_backward)");
        MPI_Waitall(int(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
        requests_.clear();
        started_ = 0;
      } else {
        reduce_in_rank_order(g);
      }
      // Every rank's loss, summed in rank order on every rank (the same double everywhere).
      MPI_Allgather(&local_loss, 1, MPI_DOUBLE, losses.data(), 1, MPI_DOUBLE, comm_);
      loss = 0;
      for (double l : losses) loss += l;
      loss /= double(size_);
      g /= Scalar(size_);
      if (opt_.stop_on_nonfinite_loss && !std::isfinite(loss)) {
        std::string ranks;
        for (int r = 0; r < size_; ++r)
          if (!std::isfinite(losses[size_t(r)]))
            ranks += (ranks.empty() ? "" : ", ") + std::to_string(r) + " ("
                   + std::to_string(losses[size_t(r)]) + ")";
        fail("data-parallel step ", steps_ + 1, ": the training loss is not finite on rank ", ranks,
             "; stopping all ", size_, " ranks");
      }
    }
    ++steps_;
    comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return loss;
  }

  /// Copies rank 0's parameters to every rank (at the start of a run: ranks on different hosts may
  /// draw different initial values if their math libraries differ).
  void broadcast_parameters() { broadcast(model_.parameters().data(), model_.num_parameters()); }

  /// After a resume on every rank: copies rank 0's parameters and AdamW moments to every rank and
  /// checks that all ranks resumed at the same step (the checkpoint must be the same file on every
  /// host).
  void broadcast_from_root(Trainer<Scalar>& trainer) {
    check_same(std::uint64_t(trainer.state().step), "the training step");
    check_same(std::uint64_t(trainer.optimizer().step_count()), "the optimizer step");
    broadcast_parameters();
    broadcast(trainer.optimizer().m().data(), trainer.optimizer().m().size());
    broadcast(trainer.optimizer().v().data(), trainer.optimizer().v().size());
  }

  /// Every rank must train on the same corpus: compares the size and a fingerprint of the training
  /// and validation tokens (a file that differs between hosts is an error on every rank).
  void check_same_data(const TokenDataset& data) {
    check_same(std::uint64_t(data.train.size()), "the number of training tokens");
    check_same(detail::fingerprint(data.train), "the training tokens (fingerprint)");
    check_same(std::uint64_t(data.val.size()), "the number of validation tokens");
    check_same(detail::fingerprint(data.val), "the validation tokens (fingerprint)");
  }

  /// Every rank must hold the same parameters, bit for bit: an error on every rank otherwise.
  void check_replicas() {
    const auto p = model_.parameters();
    check_same(detail::fingerprint(p.data(), std::size_t(p.size()) * sizeof(Scalar)),
               "the model parameters (fingerprint)");
  }

  /// True on every rank if `flag` is true on any rank (for a stop request that reached only some
  /// ranks, e.g. a signal).
  bool any(bool flag) {
    int local = flag ? 1 : 0, global = 0;
    MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_LOR, comm_);
    return global != 0;
  }

  /// Wall time spent in reduce() (waiting for the gradient buckets and the loss), summed over
  /// steps.
  double communication_seconds() const { return comm_seconds_; }
  Index steps() const { return steps_; }
  /// Buckets of the overlapped reduction in the last step.
  Index buckets_last_step() const { return buckets_last_; }

 private:
  // The backward pass reports final ranges from the end of the arena down to 0; consecutive
  // ranges are merged until min_bucket_elements, then sent.
  void on_ready(Index begin, Index end) {
    if (started_ == 0 && pending_begin_ == pending_end_) buckets_ = 0;
    STRATA_CHECK(pending_begin_ == pending_end_ || end == pending_begin_,
                 "DataParallel: gradient range [", begin, ", ", end,
                 ") does not end where the previous one began (", pending_begin_, ")");
    if (pending_begin_ == pending_end_) pending_end_ = end;
    pending_begin_ = begin;
    if (pending_end_ - pending_begin_ >= opt_.min_bucket_elements || begin == 0) {
      Scalar* g = model_.gradients().data();
      for (Index b = pending_begin_; b < pending_end_; b += detail::kMaxCount) {
        requests_.emplace_back();
        MPI_Iallreduce(MPI_IN_PLACE, g + b, int(std::min(detail::kMaxCount, pending_end_ - b)),
                       detail::datatype<Scalar>(), MPI_SUM, comm_, &requests_.back());
      }
      started_ += pending_end_ - pending_begin_;
      pending_begin_ = pending_end_ = 0;
      ++buckets_;
      if (begin == 0) buckets_last_ = buckets_;
    }
    // MPI libraries without a progress thread move non-blocking collectives forward inside MPI
    // calls: test the outstanding ones at every layer.
    int done = 0;
    if (!requests_.empty())
      MPI_Testall(int(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE);
  }

  // Rank k owns elements [P k / N, P (k + 1) / N): it receives every rank's values of its slice,
  // adds them in rank order and sends the sum back to all.
  void reduce_in_rank_order(VectorMap<Scalar>& g) {
    const Index P = g.size(), N = size_;
    STRATA_CHECK(P / N + 1 < Index(INT_MAX), "DataParallel: ", P,
                 " parameters are too many for the deterministic reduction over ", N, " ranks");
    std::vector<int>& counts = counts_;  // members: sized once, no allocation per step
    std::vector<int>& displs = displs_;
    counts.resize(static_cast<size_t>(N));
    displs.resize(static_cast<size_t>(N));
    for (Index k = 0; k < N; ++k) {
      displs[size_t(k)] = int(P * k / N);
      counts[size_t(k)] = int(P * (k + 1) / N - P * k / N);
    }
    const int mine = counts[size_t(rank_)];
    std::vector<int>& recv_counts = recv_counts_;
    std::vector<int>& recv_displs = recv_displs_;
    recv_counts.assign(static_cast<size_t>(N), mine);
    recv_displs.resize(static_cast<size_t>(N));
    for (Index j = 0; j < N; ++j) recv_displs[size_t(j)] = int(j * mine);
    scratch_.resize(N * Index(mine));
    MPI_Alltoallv(g.data(), counts.data(), displs.data(), detail::datatype<Scalar>(),
                  scratch_.data(), recv_counts.data(), recv_displs.data(),
                  detail::datatype<Scalar>(), comm_);
    auto sum = g.segment(displs[size_t(rank_)], mine);
    sum = scratch_.head(mine);
    for (Index j = 1; j < N; ++j) sum += scratch_.segment(j * mine, mine);
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, g.data(), counts.data(), displs.data(),
                   detail::datatype<Scalar>(), comm_);
  }

  template <typename T>
  void broadcast(T* data, Index n) {
    for (Index b = 0; b < n; b += detail::kMaxCount)
      MPI_Bcast(data + b, int(std::min(detail::kMaxCount, n - b)), detail::datatype<T>(), 0, comm_);
  }

  // Every rank's value of `what`; an error on every rank if they differ.
  void check_same(std::uint64_t value, const char* what) {
    std::vector<std::uint64_t> all(static_cast<size_t>(size_));
    MPI_Allgather(&value, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, comm_);
    for (int r = 1; r < size_; ++r)
      if (all[size_t(r)] != all[0])
        fail("data-parallel: rank ", r, " has ", what, " ", all[size_t(r)], ", rank 0 has ", all[0],
             " (every rank must read the same files and hold the same model)");
  }

  GPT<Scalar>& model_;
  Options opt_;
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::vector<MPI_Request> requests_;
  Index pending_begin_ = 0, pending_end_ = 0, started_ = 0;
  Index buckets_ = 0, buckets_last_ = 0;
  Vector<Scalar> scratch_;
  std::vector<double> losses_;
  std::vector<int> counts_, displs_, recv_counts_, recv_displs_;
  double comm_seconds_ = 0;
  Index steps_ = 0;
};

}  // namespace strata::mpi
