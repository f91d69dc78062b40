//! Named IVR definitions: a directory (`ivr.dir`) of TOML files, one definition per file,
//! named by the file's stem (`main-menu.toml` is `{"definition": "main-menu"}`).
//!
//! ```toml
//! start = "main"
//!
//! [prompts]                 # recorded prompts: WAV files, relative to this file
//! welcome = "prompts/welcome.wav"
//!
//! [menus.main]
//! prompt = [{ wav = "welcome" }, { duration_ms = 200 }]
//! options = { "1" = { menu = "sales" }, "0" = { hangup = true } }
//! barge_in = { threshold_dbfs = -35 }
//! ```
//!
//! Everything is read and checked when the worker starts: the TOML shape (unknown keys are
//! refused), the menus (the same rules as inline menus), every WAV file (RIFF; PCM 16-bit,
//! A-law or mu-law; mono or stereo; 4-96 kHz), the bounds (`ivr.definitions_max` files,
//! `ivr.prompt_file_bytes_max` per WAV file, [`PROMPTS_PER_DEFINITION_MAX`] prompts, and
//! `ivr.prompt_memory_bytes_max` of decoded audio in all). A bad file is a configuration
//! error: the worker prints one line naming the file and exits with code 64.
//!
//! Prompts are decoded to PCM and resampled (windowed sinc, `callworker_call::dsp::resample`)
//! to every call rate once, here. Each definition carries a hash of its menus and audio;
//! a call keeps the name and the hash, so a worker that resumes it finds the same
//! definition by name in its own copy of the configuration and can tell whether it changed
//! (`Call::bind_ivr`).

use std::collections::BTreeMap;
use std::path::Path;

use callworker_call::program::{Clip, IvrClips, IvrMenu, IvrParams};
use serde::Deserialize;

use crate::config::{ConfigError, IvrConfig, invalid};

/// Most prompts (WAV files) one definition names.
pub const PROMPTS_PER_DEFINITION_MAX: usize = 64;
/// Largest definition file, in bytes.
pub const DEFINITION_FILE_BYTES_MAX: u64 = 1 << 20;

/// One definition file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    start: String,
    #[serde(default)]
    prompts: BTreeMap<String, String>,
    menus: BTreeMap<String, IvrMenu>,
}

/// Loads every `*.toml` file of `config.dir` (none when unset).
pub fn load(config: &IvrConfig) -> Result<BTreeMap<String, IvrParams>, ConfigError> {
    let mut definitions = BTreeMap::new();
    let Some(dir) = &config.dir else { return Ok(definitions) };
    let fail = |what: String| invalid(format!("ivr.dir {}: {what}", dir.display()));
    let entries = std::fs::read_dir(dir).map_err(|e| fail(format!("cannot read the directory: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| fail(format!("cannot read the directory: {e}")))?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    if files.len() > config.definitions_max {
        return Err(fail(format!(
            "{} definition files; ivr.definitions_max is {}",
            files.len(),
            config.definitions_max
        )));
    }
    let mut memory = 0usize;
    for path in files {
        let file = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let at = |what: String| invalid(format!("ivr definition {file}: {what}"));
        let name =
            path.file_stem().and_then(|s| s.to_str()).ok_or_else(|| at("the name is not UTF-8".into()))?;
        let definition = load_one(&path, name, config).map_err(at)?;
        memory = memory.saturating_add(definition.clips.get().map_or(0, IvrClips::bytes));
        if memory > config.prompt_memory_bytes_max {
            return Err(at(format!(
                "the decoded prompts need more than ivr.prompt_memory_bytes_max ({} bytes)",
                config.prompt_memory_bytes_max
            )));
        }
        definitions.insert(name.to_owned(), definition);
    }
    Ok(definitions)
}

fn load_one(path: &Path, name: &str, config: &IvrConfig) -> Result<IvrParams, String> {
    let size = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?.len();
    if size > DEFINITION_FILE_BYTES_MAX {
        return Err(format!("{size} bytes; at most {DEFINITION_FILE_BYTES_MAX}"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let raw: RawDefinition = toml::from_str(&text).map_err(|e| one_line(&e.to_string()))?;
    if raw.prompts.len() > PROMPTS_PER_DEFINITION_MAX {
        return Err(format!("{} prompts; at most {PROMPTS_PER_DEFINITION_MAX}", raw.prompts.len()));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut clips = IvrClips::default();
    for (prompt, file) in &raw.prompts {
        let wav_path = base.join(file);
        let at = |what: String| format!("prompt {prompt:?} ({file}): {what}");
        let size = std::fs::metadata(&wav_path).map_err(|e| at(format!("cannot read: {e}")))?.len();
        if size > config.prompt_file_bytes_max {
            return Err(at(format!(
                "{size} bytes; ivr.prompt_file_bytes_max is {}",
                config.prompt_file_bytes_max
            )));
        }
        let bytes = std::fs::read(&wav_path).map_err(|e| at(format!("cannot read: {e}")))?;
        let (samples, rate) = crate::wav::decode(&bytes).map_err(|e| at(e.to_string()))?;
        clips.clips.insert(prompt.clone(), Clip::from_pcm(&samples, rate));
    }
    IvrParams::definition(name, raw.start, raw.menus, clips).map_err(|e| e.to_string())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use callworker_protocol::{AudioFormat, Encoding};

    fn config(dir: &Path) -> IvrConfig {
        IvrConfig {
            dir: Some(dir.to_owned()),
            definitions_max: 4,
            prompt_file_bytes_max: 1 << 20,
            prompt_memory_bytes_max: 1 << 22,
            definitions: Default::default(),
        }
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cw-ivr-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const MENU: &str = r#"
start = "main"
[prompts]
welcome = "welcome.wav"
[menus.main]
prompt = [{ wav = "welcome" }, { freqs_hz = [440], duration_ms = 100 }]
options = { "1" = { hangup = true } }
barge_in = { threshold_dbfs = -30 }
"#;

    fn write_wav(dir: &Path, rate: u32, samples: usize) {
        let pcm: Vec<i16> = (0..samples).map(|i| ((i % 50) as i16 - 25) * 400).collect();
        let mut bytes = Vec::new();
        callworker_protocol::codec::encode(Encoding::L16, &pcm, &mut bytes);
        let wav = crate::wav::encode(AudioFormat { encoding: Encoding::L16, sample_rate_hz: 16_000 }, &bytes);
        let mut wav = wav;
        wav[24..28].copy_from_slice(&rate.to_le_bytes());
        std::fs::write(dir.join("welcome.wav"), wav).unwrap();
    }

    #[test]
    fn a_directory_of_definitions_loads_with_resampled_prompts() {
        let dir = tempdir("ok");
        write_wav(&dir, 22_050, 22_050);
        std::fs::write(dir.join("main-menu.toml"), MENU).unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let defs = load(&config(&dir)).unwrap();
        assert_eq!(defs.keys().collect::<Vec<_>>(), ["main-menu"]);
        let def = &defs["main-menu"];
        assert_eq!(def.definition.as_ref().unwrap().name, "main-menu");
        let clip = def.clips.get().unwrap().get("welcome").unwrap();
        assert_eq!(clip.frames(8_000), 50, "one second of audio is 50 frames");
        assert_eq!(clip.samples(16_000).len(), 16_000);
        // The same files give the same hash; another prompt, another hash.
        let again = load(&config(&dir)).unwrap();
        assert_eq!(again["main-menu"].definition, def.definition);
        write_wav(&dir, 22_050, 11_025);
        let changed = load(&config(&dir)).unwrap();
        assert_ne!(changed["main-menu"].definition, def.definition);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_are_refused_with_the_file_named() {
        let cases: &[(&str, &str, &str)] = &[
            ("syntax", "start = ", "ivr definition syntax.toml"),
            (
                "unknown-key",
                "start = \"m\"\ncolour = 1\n[menus.m]\nprompt = [{ duration_ms = 20 }]",
                "colour",
            ),
            ("no-menu", "start = \"x\"\n[menus.m]\nprompt = [{ duration_ms = 20 }]", "no menu named \"x\""),
            (
                "missing-wav",
                "start = \"m\"\n[prompts]\nhi = \"nope.wav\"\n[menus.m]\nprompt = [{ wav = \"hi\" }]",
                "prompt \"hi\" (nope.wav): cannot read",
            ),
            (
                "not-wav",
                "start = \"m\"\n[prompts]\nhi = \"not-wav.toml\"\n[menus.m]\nprompt = [{ wav = \"hi\" }]",
                "not a RIFF/WAVE file",
            ),
            (
                "unknown-prompt",
                "start = \"m\"\n[menus.m]\nprompt = [{ wav = \"hi\" }]",
                "no prompt named \"hi\"",
            ),
            ("bad name!", "start = \"m\"\n[menus.m]\nprompt = [{ duration_ms = 20 }]", "name \"bad name!\""),
        ];
        for (name, text, expected) in cases {
            let dir = tempdir(&format!("bad-{}", name.replace(' ', "_").replace('!', "")));
            std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
            let err = load(&config(&dir)).unwrap_err().to_string();
            assert!(err.contains(expected), "{name}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
        // Too many files, too much audio.
        let dir = tempdir("bounds");
        write_wav(&dir, 8_000, 8_000);
        for i in 0..5 {
            std::fs::write(dir.join(format!("m{i}.toml")), MENU).unwrap();
        }
        let err = load(&config(&dir)).unwrap_err().to_string();
        assert!(err.contains("ivr.definitions_max"), "{err}");
        let small = IvrConfig { definitions_max: 10, prompt_memory_bytes_max: 50_000, ..config(&dir) };
        let err = load(&small).unwrap_err().to_string();
        assert!(err.contains("ivr.prompt_memory_bytes_max"), "{err}");
        let tiny_files = IvrConfig { definitions_max: 10, prompt_file_bytes_max: 1_024, ..config(&dir) };
        let err = load(&tiny_files).unwrap_err().to_string();
        assert!(err.contains("ivr.prompt_file_bytes_max"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
