# Turns each Lua script into a C string constant in one generated header, so the scripts
# live as readable .lua files in src/store/lua/ and ship inside the binary.
#   cmake -DOUT=<header> -DSRC=<dir> -P EmbedLua.cmake
file(GLOB scripts "${SRC}/*.lua")
list(SORT scripts)
set(content "/* Generated from the scripts in src/store/lua by cmake/EmbedLua.cmake: do not edit. */\n")
string(APPEND content "#ifndef PD_REDIS_SCRIPTS_H\n#define PD_REDIS_SCRIPTS_H\n\n")
foreach(f ${scripts})
  get_filename_component(name ${f} NAME_WE)
  file(READ ${f} body)
  # A raw string would be simplest, but C11 has none: escape backslashes, quotes, newlines.
  string(REPLACE "\\" "\\\\" body "${body}")
  string(REPLACE "\"" "\\\"" body "${body}")
  string(REPLACE "\n" "\\n\"\n    \"" body "${body}")
  string(APPEND content "static const char lua_${name}[] =\n    \"${body}\";\n\n")
endforeach()
string(APPEND content "#endif\n")
file(WRITE "${OUT}.tmp" "${content}")
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different "${OUT}.tmp" "${OUT}")
file(REMOVE "${OUT}.tmp")
