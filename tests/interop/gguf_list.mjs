// Lists a GGUF file's tensors with @huggingface/gguf, an independent
// reader, in the format of `moe-layer MODEL --tensors`, so the two can be
// compared line for line. Also prints the MoE keys it sees.
import { gguf } from "@huggingface/gguf";

const file = process.argv[2];
const { metadata, tensorInfos, tensorDataOffset } = await gguf(file, {
  allowLocalFile: true,
});
const align = metadata["general.alignment"] ?? 32;
console.log(`version ${metadata.version} alignment ${align} data ${tensorDataOffset}`);
for (const t of tensorInfos)
  console.log(`${t.name} ${t.dtype} ${t.shape.join(",")} ${t.offset}`);
const arch = metadata["general.architecture"];
for (const k of ["block_count", "embedding_length", "expert_count", "expert_used_count"])
  console.error(`${arch}.${k} = ${metadata[`${arch}.${k}`]}`);
