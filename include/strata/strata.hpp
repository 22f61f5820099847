// strata/strata.hpp: everything. Each folder's headers can also be included alone.
#pragma once

#include "attention/plan.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/threading.hpp"
#include "core/types.hpp"
#include "kernels/attention.hpp"
#include "kernels/cross_entropy.hpp"
#include "kernels/embedding.hpp"
#include "kernels/gelu.hpp"
#include "kernels/layernorm.hpp"
#include "kernels/linear.hpp"
#include "model/config.hpp"
#include "model/gpt.hpp"
#include "model/parameters.hpp"
#include "model/sampling.hpp"
#include "text/text.hpp"
#include "train/adamw.hpp"
#include "train/data.hpp"

// Checkpoints and training need nlohmann/json (for the safetensors header and metadata).
#if __has_include(<nlohmann/json.hpp>)
#include "io/checkpoint.hpp"
#include "io/config_json.hpp"
#include "io/safetensors.hpp"
#include "text/metadata.hpp"
#include "train/checkpoint.hpp"
#include "train/trainer.hpp"
#endif
