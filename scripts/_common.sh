# Shared by the launch scripts (source it, do not run it). Every script calls the
# `prompt-diffusion train` command with CoOp's train.py flags and writes the run directories
# `prompt-diffusion sweep` writes, so scripts, sweeps and `prompt-diffusion table` work together.
#
# Environment:
#   DATA     folder holding the datasets (required)
#   OUTPUT   root of the run directories (default: output)
#   CFG      trainer config name in configs/trainers/<Method>/ (default: the paper's, section 5.1)
#   SHOTS    shots per class for training (default: 16)
#   LOADEP   checkpoint epoch evaluated by the test scripts (default: 50, the paper configs' epochs)
#   DRY_RUN  1: print the command instead of running it
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTPUT="${OUTPUT:-output}"
SHOTS="${SHOTS:-16}"
LOADEP="${LOADEP:-50}"
METHODS="CoOp CoCoOp VPT IVLP MaPLe PromptSRC CoPrompt (each also as <Method>PD)"

# host method of a trainer name: CoCoOpPD -> CoCoOp (the PD variants use their host's configs)
host_of() {
    local trainer="$1" host="${1%PD}"
    case "$host" in
        CoOp|CoCoOp|VPT|IVLP|MaPLe|PromptSRC|CoPrompt) echo "$host" ;;
        *) echo "unknown trainer '$trainer'; choose one of: $METHODS" >&2; return 2 ;;
    esac
}

# the paper's training settings (section 5.1) per host method
paper_config_of() {
    case "$1" in
        CoOp) echo "vit_b16_ep50_batch32_pd_paper" ;;
        CoCoOp) echo "vit_b16_c4_ep50_batch4_ctxv1_pd_paper" ;;
        VPT) echo "vit_b16_c4_ep50_batch32_4_pd_paper" ;;
        IVLP) echo "vit_b16_c2_ep50_batch32_2+2ctx_pd_paper" ;;
        MaPLe) echo "vit_b16_c2_ep50_batch32_2ctx_pd_paper" ;;
        PromptSRC) echo "vit_b16_c2_ep50_batch32_2+2ctx_pd_paper" ;;
        CoPrompt) echo "coprompt_ep50_batch32_pd_paper" ;;
    esac
}

# begin "TRAINER [DATASET] SEED" ARGS...: check the arguments and DATA; set TRAINER, HOST, CFG,
# CONFIG_FILE, DATASET (imagenet when the usage has none), DATASET_FILE and SEED
begin() {
    local usage="$1"; shift
    local names=($usage)
    if [ $# -ne ${#names[@]} ]; then
        echo "usage: $0 $usage  (TRAINER: $METHODS)" >&2
        exit 2
    fi
    if [ -z "${DATA:-}" ] && [ "${DRY_RUN:-0}" != 1 ]; then
        echo "set DATA to the folder holding the datasets, e.g. DATA=/data/coop $0 $*" >&2
        exit 2
    fi
    TRAINER="$1"
    HOST="$(host_of "$TRAINER")"
    CFG="${CFG:-$(paper_config_of "$HOST")}"
    CONFIG_FILE="$REPO/configs/trainers/$HOST/$CFG.yaml"
    if [ ! -f "$CONFIG_FILE" ]; then
        echo "config $CONFIG_FILE does not exist; available for $HOST: $(cd "$REPO/configs/trainers/$HOST" && ls | tr '\n' ' ')" >&2
        exit 2
    fi
    DATASET="imagenet"
    [ $# -eq 3 ] && DATASET="$2"
    DATASET_FILE="$REPO/configs/datasets/$DATASET.yaml"
    if [ ! -f "$DATASET_FILE" ]; then
        echo "unknown dataset '$DATASET'; available: $(cd "$REPO/configs/datasets" && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
        exit 2
    fi
    SEED="${!#}"
}

# run_once DIR ARGS...: `prompt-diffusion train` into DIR (ARGS: more flags, then config opts),
# unless DIR's log already holds a result; DRY_RUN=1 prints the command instead
run_once() {
    local dir="$1"; shift
    if ls "$dir"/log.txt* >/dev/null 2>&1 && grep -q '^\* accuracy:' "$dir"/log.txt*; then
        echo "Results are available in $dir, skipping"
        return 0
    fi
    local cmd=(train --root "${DATA:-\$DATA}" --seed "$SEED" --trainer "$TRAINER"
               --dataset-config-file "$DATASET_FILE" --config-file "$CONFIG_FILE" --output-dir "$dir" "$@")
    if [ "${DRY_RUN:-0}" = 1 ]; then
        echo "prompt-diffusion ${cmd[*]}"
    else
        prompt-diffusion "${cmd[@]}"
    fi
}
